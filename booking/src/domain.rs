//! Domain values that cannot hold invalid data: each is built only through
//! `parse` (or `TryFrom`), and its fields are private.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value was refused. The message is for developers and API clients;
/// pages translate the `field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidValue {
    InvalidValue {
        field,
        reason: reason.into(),
    }
}

macro_rules! string_newtype_serde {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                $name::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A Swedish kommunkod: exactly four ASCII digits, e.g. `2460` for Vännäs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MunicipalityCode(String);

impl MunicipalityCode {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.len() == 4 && raw.bytes().all(|b| b.is_ascii_digit()) {
            Ok(MunicipalityCode(raw.to_owned()))
        } else {
            Err(invalid("municipality", "a kommunkod is four digits"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
string_newtype_serde!(MunicipalityCode);

/// An email address: one `@`, a non-empty local part, and a domain with a dot.
/// Stored lower-cased so that sign-in does not depend on capitalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        let (local, domain) = trimmed
            .split_once('@')
            .ok_or_else(|| invalid("email", "an address needs an @"))?;
        let ok = !local.is_empty()
            && local.len() <= 64
            && trimmed.len() <= 254
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && !trimmed.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(EmailAddress(trimmed.to_lowercase()))
        } else {
            Err(invalid("email", "not a valid email address"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
string_newtype_serde!(EmailAddress);

/// A stable service code such as `ekonomiskt-bistand`: lower-case ASCII
/// letters, digits and dashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceCode(String);

impl ServiceCode {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(ServiceCode(raw.to_owned()))
        } else {
            Err(invalid(
                "service",
                "a service code is lower-case letters, digits and dashes",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
string_newtype_serde!(ServiceCode);

/// The languages Kontakt speaks. Swedish is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Language {
    #[default]
    Sv,
    En,
    Fi,
    Ar,
}

impl Language {
    pub const ALL: [Language; 4] = [Language::Sv, Language::En, Language::Fi, Language::Ar];

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "sv" => Ok(Language::Sv),
            "en" => Ok(Language::En),
            "fi" => Ok(Language::Fi),
            "ar" => Ok(Language::Ar),
            _ => Err(invalid("language", "one of sv, en, fi, ar")),
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            Language::Sv => "sv",
            Language::En => "en",
            Language::Fi => "fi",
            Language::Ar => "ar",
        }
    }
    pub fn as_str(&self) -> &str {
        self.code()
    }
    /// Whether pages in this language run right to left.
    pub fn is_rtl(self) -> bool {
        matches!(self, Language::Ar)
    }
}
string_newtype_serde!(Language);

macro_rules! str_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    _ => Err(invalid($field, concat!("one of: ", $($text, " "),+))),
                }
            }
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        string_newtype_serde!($name);
    };
}

str_enum!(
    /// The steps every service moves through.
    Step, "step", {
        Information => "information",
        PreAssessment => "pre_assessment",
        Meeting => "meeting",
        Investigation => "investigation",
        Decision => "decision",
        FollowUp => "follow_up",
    }
);

str_enum!(
    /// Who may perform a step for a resident of another municipality.
    Rule, "rule", {
        Open => "open",
        Agreement => "agreement",
        HomeOnly => "home_only",
    }
);

str_enum!(
    /// What a booking or an audit entry rests on: the resident's home
    /// municipality, or the cross-border rule of the service step.
    Basis, "basis", {
        Home => "home",
        Open => "open",
        Agreement => "agreement",
        HomeOnly => "home_only",
    }
);

impl From<Rule> for Basis {
    fn from(rule: Rule) -> Basis {
        match rule {
            Rule::Open => Basis::Open,
            Rule::Agreement => Basis::Agreement,
            Rule::HomeOnly => Basis::HomeOnly,
        }
    }
}

str_enum!(
    /// What a staff account may do.
    Role, "role", {
        Staff => "staff",
        Scheduler => "scheduler",
        Admin => "admin",
    }
);

str_enum!(
    /// Where a booking stands.
    BookingStatus, "status", {
        Booked => "booked",
        Cancelled => "cancelled",
        Completed => "completed",
        NoShow => "no_show",
    }
);

/// A half-open span of time `[start, end)` in UTC, with `start < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SlotRange {
    start: jiff::Timestamp,
    end: jiff::Timestamp,
}

impl SlotRange {
    pub fn new(start: jiff::Timestamp, end: jiff::Timestamp) -> Result<Self, InvalidValue> {
        if start < end {
            Ok(SlotRange { start, end })
        } else {
            Err(invalid("range", "the start must come before the end"))
        }
    }
    pub fn from_unix(start: i64, end: i64) -> Result<Self, InvalidValue> {
        let ts = |s| jiff::Timestamp::from_second(s).map_err(|e| invalid("range", e.to_string()));
        SlotRange::new(ts(start)?, ts(end)?)
    }
    pub fn start(&self) -> jiff::Timestamp {
        self.start
    }
    pub fn end(&self) -> jiff::Timestamp {
        self.end
    }
    pub fn overlaps(&self, other: &SlotRange) -> bool {
        self.start < other.end && other.start < self.end
    }
    pub fn minutes(&self) -> i64 {
        (self.end.as_second() - self.start.as_second()) / 60
    }
}

/// A person's name as they gave it: a resident's at first sign-in, a staff
/// member's when their account is made. Trimmed, 1 to
/// [`PersonName::MAX_CHARS`] characters, and free of control characters and
/// of the invisible characters that steer text direction.
///
/// Direction controls are refused rather than stripped, so that nobody's name
/// is silently changed: an override (U+202D, U+202E) in a name makes the text
/// after it on a staff page read backwards, and nobody types one by accident.
/// The refused characters are the embeddings and overrides U+202A..=U+202E,
/// the isolates U+2066..=U+2069, and the marks U+200E, U+200F and U+061C.
/// Right-to-left names need none of them: Arabic and Hebrew letters carry
/// their direction themselves, and pages isolate names with `<bdi>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PersonName(String);

impl PersonName {
    /// The longest name accepted, in characters. Long enough for any real
    /// name with all its given names, short enough to fit a staff table.
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            Err(invalid("name", "a name is needed"))
        } else if chars > Self::MAX_CHARS {
            Err(invalid(
                "name",
                format!("at most {} characters", Self::MAX_CHARS),
            ))
        } else if trimmed
            .chars()
            .any(|c| c.is_control() || is_direction_control(c))
        {
            Err(invalid(
                "name",
                "a name cannot hold control characters or text direction characters",
            ))
        } else {
            Ok(PersonName(trimmed.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
string_newtype_serde!(PersonName);

/// A telephone number as a resident writes it, for being called back:
/// digits with spaces, dashes, parentheses and a leading `+`, 6 to 15
/// digits (E.164's most), at most 32 characters in all. Kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        let digits = trimmed.chars().filter(char::is_ascii_digit).count();
        let shaped = trimmed.chars().enumerate().all(|(i, c)| {
            c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')') || (c == '+' && i == 0)
        });
        if shaped && (6..=15).contains(&digits) && trimmed.len() <= 32 {
            Ok(PhoneNumber(trimmed.to_owned()))
        } else {
            Err(invalid(
                "contact_phone",
                "a telephone number is 6 to 15 digits, with spaces, dashes, parentheses and a leading +",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
string_newtype_serde!(PhoneNumber);

/// What a resident writes to the social services outside a chat (the
/// offline form): trimmed, 1 to [`MessageText::MAX_CHARS`] characters, with
/// no control characters but line breaks and tabs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageText(String);

impl MessageText {
    /// The longest message, in characters.
    pub const MAX_CHARS: usize = 2000;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            Err(invalid("message", "a message is needed"))
        } else if chars > Self::MAX_CHARS {
            Err(invalid(
                "message",
                format!("at most {} characters", Self::MAX_CHARS),
            ))
        } else if trimmed
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            Err(invalid(
                "message",
                "a message cannot hold control characters",
            ))
        } else {
            Ok(MessageText(trimmed.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
string_newtype_serde!(MessageText);

/// The invisible characters that change the direction of the text around
/// them (Unicode's bidirectional formatting characters).
fn is_direction_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// A local calendar date Kontakt plans with, between [`LocalDate::EARLIEST`]
/// and [`LocalDate::LATEST`]. The bound keeps every date a client sends far
/// from the ends of the calendar, where turning a day into its hours or
/// stepping to the next day fails: such a date is refused where it comes in,
/// instead of failing in the middle of a query as if stored data were broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalDate(jiff::civil::Date);

impl LocalDate {
    /// The first date Kontakt accepts.
    pub const EARLIEST: jiff::civil::Date = jiff::civil::date(2000, 1, 1);
    /// The last date Kontakt accepts.
    pub const LATEST: jiff::civil::Date = jiff::civil::date(2199, 12, 31);

    /// Parses `YYYY-MM-DD`; `field` names the value in the error.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let date: jiff::civil::Date = raw
            .trim()
            .parse()
            .map_err(|_| invalid(field, "expected a date as YYYY-MM-DD"))?;
        LocalDate::new(field, date)
    }

    /// `date`, if it lies within the bounds.
    pub fn new(field: &'static str, date: jiff::civil::Date) -> Result<Self, InvalidValue> {
        if (Self::EARLIEST..=Self::LATEST).contains(&date) {
            Ok(LocalDate(date))
        } else {
            Err(invalid(
                field,
                format!("a date from {} to {}", Self::EARLIEST, Self::LATEST),
            ))
        }
    }

    /// Whether `at` falls on a date within the bounds (in UTC; the bounds
    /// are far enough from the calendar's ends that the zone does not
    /// matter). For times a client sends, such as a booking's start.
    pub fn holds(field: &'static str, at: jiff::Timestamp) -> Result<(), InvalidValue> {
        LocalDate::new(field, at.to_zoned(jiff::tz::TimeZone::UTC).date()).map(|_| ())
    }

    pub fn date(self) -> jiff::civil::Date {
        self.0
    }
}

impl fmt::Display for LocalDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The local dates `from..=to`, with `from` not after `to`, both within
/// [`LocalDate`]'s bounds. How long a range may be depends on what it is
/// for; the function that uses it says so with [`DateRange::at_most`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateRange {
    from: LocalDate,
    to: LocalDate,
}

impl DateRange {
    pub fn new(from: LocalDate, to: LocalDate) -> Result<Self, InvalidValue> {
        if from <= to {
            Ok(DateRange { from, to })
        } else {
            Err(invalid("range", "from must not be after to"))
        }
    }

    /// `from` and the `days` days after it.
    pub fn starting(from: jiff::civil::Date, days: i64) -> Result<Self, InvalidValue> {
        let to = from
            .checked_add(jiff::Span::new().days(days.max(0)))
            .map_err(|_| invalid("to", "beyond the calendar"))?;
        DateRange::new(LocalDate::new("from", from)?, LocalDate::new("to", to)?)
    }

    /// The range, if `to` is at most `days` days after `from`.
    pub fn at_most(self, days: i64) -> Result<Self, InvalidValue> {
        if self.days_apart() <= days {
            Ok(self)
        } else {
            Err(invalid(
                "range",
                format!("from and to may be at most {days} days apart"),
            ))
        }
    }

    pub fn from(&self) -> jiff::civil::Date {
        self.from.date()
    }

    pub fn to(&self) -> jiff::civil::Date {
        self.to.date()
    }

    /// How many days `to` is after `from`: 0 for a single day.
    pub fn days_apart(&self) -> i64 {
        i64::from((self.to.date() - self.from.date()).get_days())
    }
}

/// A password as typed, checked only for length: argon2 does the rest.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.chars().count() < 8 {
            Err(invalid("password", "at least 8 characters"))
        } else if raw.len() > 1024 {
            Err(invalid("password", "at most 1024 bytes"))
        } else {
            Ok(Password(raw.to_owned()))
        }
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A password someone chooses for a staff account: at least
/// [`NewPassword::MIN_CHARS`] characters and not on the list of common
/// passwords (compared without regard to case). Only a `NewPassword` can be
/// hashed, so no path that sets a password can skip these checks; signing
/// in still takes any [`Password`], so that accounts made before the rule
/// are not locked out.
#[derive(Clone)]
pub struct NewPassword(Password);

impl NewPassword {
    pub const MIN_CHARS: usize = 12;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(invalid(
                "password",
                format!("at least {} characters", Self::MIN_CHARS),
            ));
        }
        if crate::passwords::is_common(raw) {
            return Err(invalid(
                "password",
                "too common: it is on a list of passwords that attackers try first",
            ));
        }
        Password::parse(raw).map(NewPassword)
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(..)")
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn municipality_codes() {
        for ok in ["2460", "0180", "1283"] {
            assert!(MunicipalityCode::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "246", "24601", "24a0", "２４６０", " 2460"] {
            assert!(MunicipalityCode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn email_addresses() {
        assert_eq!(
            EmailAddress::parse(" Anna@Example.se ").unwrap().as_str(),
            "anna@example.se"
        );
        for bad in [
            "",
            "anna",
            "anna@",
            "@example.se",
            "a@b",
            "a b@c.se",
            "a@.se",
            "a@b@c.se",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phone_numbers() {
        for ok in [
            "070-123 45 67",
            "+46 (0)70 123 45 67",
            "0951 14000",
            "123456",
        ] {
            assert_eq!(PhoneNumber::parse(ok).unwrap().as_str(), ok.trim(), "{ok}");
        }
        for bad in [
            "",
            "12345",
            "070 123 45 67 89 01 23",
            "46+70123456",
            "070-CALL-ME",
            "0701234567; DROP",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_texts() {
        assert_eq!(
            MessageText::parse("  Hej!\nRing mig.  ").unwrap().as_str(),
            "Hej!\nRing mig."
        );
        assert!(MessageText::parse(" \n ").is_err());
        let longest = "ä".repeat(MessageText::MAX_CHARS);
        assert!(
            MessageText::parse(&longest).is_ok(),
            "counted in characters"
        );
        assert!(MessageText::parse(&format!("{longest}a")).is_err());
        assert!(MessageText::parse("a\u{7}b").is_err());
    }

    #[test]
    fn person_names() {
        assert_eq!(
            PersonName::parse("  Leila Haddad ").unwrap().as_str(),
            "Leila Haddad"
        );
        for ok in [
            "ليلى حداد",
            "Aino Korhonen",
            "Åsa Öhman-Ek",
            &"a".repeat(100),
        ] {
            assert!(PersonName::parse(ok).is_ok(), "{ok}");
        }
        let too_long = "a".repeat(PersonName::MAX_CHARS + 1);
        let with_override = "Anna\u{202E}gnitekram";
        for bad in [
            "",
            "   ",
            too_long.as_str(),
            with_override,
            "Anna\u{2066}X\u{2069}",
            "Anna\u{200F}",
            "Anna\nLindqvist",
            "Anna\u{0}",
        ] {
            assert!(PersonName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            serde_json::from_str::<PersonName>(&format!("\"{}\"", "x".repeat(20_000))).is_err()
        );
    }

    #[test]
    fn slot_ranges_need_start_before_end() {
        assert!(SlotRange::from_unix(10, 10).is_err());
        assert!(SlotRange::from_unix(11, 10).is_err());
        let a = SlotRange::from_unix(0, 60).unwrap();
        let b = SlotRange::from_unix(60, 120).unwrap();
        assert!(
            !a.overlaps(&b),
            "half-open ranges that touch do not overlap"
        );
        assert!(a.overlaps(&SlotRange::from_unix(59, 61).unwrap()));
    }

    #[test]
    fn local_dates_stay_within_the_bounds() {
        assert_eq!(
            LocalDate::parse("from", "2026-12-03").unwrap().to_string(),
            "2026-12-03"
        );
        assert!(LocalDate::parse("from", "2000-01-01").is_ok());
        assert!(LocalDate::parse("from", "2199-12-31").is_ok());
        for bad in [
            "9999-12-31",
            "9999-12-01",
            "2200-01-01",
            "1999-12-31",
            "-009999-01-01",
            "2026-02-30",
            "tomorrow",
            "",
        ] {
            let err = LocalDate::parse("from", bad).unwrap_err();
            assert_eq!(err.field, "from", "{bad}");
        }
        let far = "9999-12-30T12:00:00Z".parse().unwrap();
        assert!(LocalDate::holds("starts_at", far).is_err());
        let near = "2026-12-03T09:00:00Z".parse().unwrap();
        assert!(LocalDate::holds("starts_at", near).is_ok());
    }

    #[test]
    fn a_basis_is_home_or_the_rule_it_rests_on() {
        for rule in [Rule::Open, Rule::Agreement, Rule::HomeOnly] {
            assert_eq!(Basis::from(rule).as_str(), rule.as_str());
        }
        assert_eq!(Basis::parse("home").unwrap(), Basis::Home);
        let err = Basis::parse("closed").unwrap_err();
        assert_eq!(err.field, "basis");
    }

    #[test]
    fn date_ranges_run_forwards_and_say_how_long_they_may_be() {
        let d = |raw| LocalDate::parse("date", raw).unwrap();
        let range = DateRange::new(d("2026-12-01"), d("2026-12-31")).unwrap();
        assert_eq!(range.days_apart(), 30);
        assert!(range.at_most(30).is_ok());
        assert!(range.at_most(29).is_err());
        assert_eq!(
            DateRange::new(d("2026-12-03"), d("2026-12-03"))
                .unwrap()
                .days_apart(),
            0
        );
        assert!(DateRange::new(d("2026-12-04"), d("2026-12-03")).is_err());
    }

    #[test]
    fn enums_round_trip_through_text() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()).unwrap(), *step);
        }
        assert!(Rule::parse("anything").is_err());
        let json = serde_json::to_string(&Rule::HomeOnly).unwrap();
        assert_eq!(json, "\"home_only\"");
        assert!(serde_json::from_str::<Rule>("\"closed\"").is_err());
    }
}
