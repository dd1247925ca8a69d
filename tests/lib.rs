//! System tests of the whole of Kontakt live in `api/` and `e2e/`.
