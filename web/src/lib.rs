//! The `kontakt` binary.
