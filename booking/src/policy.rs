//! The cross-border policy: whether a municipality may perform a step of a
//! service for a resident of another municipality on a given date.
//!
//! This is the one place that decides it. Search, booking, staff reads and
//! (through the caller) chat routing all ask [`decide`], so the legal map the
//! public sees and the rules the system enforces cannot drift apart.

use jiff::civil::Date;
use serde::Serialize;

use crate::domain::{Basis, MunicipalityCode, Rule, ServiceCode, Step};

/// An avtalssamverkan: `host` may perform the covered steps of services for
/// residents of `home` between `valid_from` and `valid_to`, both inclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agreement {
    pub id: String,
    pub host: MunicipalityCode,
    pub home: MunicipalityCode,
    pub valid_from: Date,
    pub valid_to: Date,
    pub reference: String,
    pub scopes: Vec<(ServiceCode, Step)>,
}

impl Agreement {
    /// Whether this agreement lets `host` perform `step` of `service` for
    /// residents of `home` on `date`.
    pub fn covers(
        &self,
        host: &MunicipalityCode,
        home: &MunicipalityCode,
        service: &ServiceCode,
        step: Step,
        date: Date,
    ) -> bool {
        &self.host == host
            && &self.home == home
            && self.valid_from <= date
            && date <= self.valid_to
            && self
                .scopes
                .iter()
                .any(|(s, st)| s == service && *st == step)
    }
}

/// The outcome of asking the policy, with what the decision relied on so that
/// the booking and the audit log can record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The resident's own municipality performs the step.
    Home,
    /// Another municipality may perform it: under an `open` rule (no
    /// agreement), or under the named agreement.
    CrossBorder {
        rule: Rule,
        agreement_id: Option<String>,
    },
    /// Not allowed.
    Refused { rule: Rule },
}

impl Decision {
    pub fn allowed(&self) -> bool {
        !matches!(self, Decision::Refused { .. })
    }

    /// What bookings and audit entries record it rests on: the home
    /// municipality, otherwise the service step's rule.
    pub fn basis(&self) -> Basis {
        match self {
            Decision::Home => Basis::Home,
            Decision::CrossBorder { rule, .. } | Decision::Refused { rule } => Basis::from(*rule),
        }
    }

    pub fn agreement_id(&self) -> Option<&str> {
        match self {
            Decision::CrossBorder { agreement_id, .. } => agreement_id.as_deref(),
            _ => None,
        }
    }
}

/// Decides whether `host` may perform `step` of `service` for a resident of
/// `home` on `date`, given the step's `rule` and the agreements in force.
pub fn decide(
    rule: Rule,
    host: &MunicipalityCode,
    home: &MunicipalityCode,
    service: &ServiceCode,
    step: Step,
    date: Date,
    agreements: &[Agreement],
) -> Decision {
    if host == home {
        return Decision::Home;
    }
    match rule {
        Rule::Open => Decision::CrossBorder {
            rule,
            agreement_id: None,
        },
        Rule::HomeOnly => Decision::Refused { rule },
        Rule::Agreement => match agreements
            .iter()
            .find(|a| a.covers(host, home, service, step, date))
        {
            Some(a) => Decision::CrossBorder {
                rule,
                agreement_id: Some(a.id.clone()),
            },
            None => Decision::Refused { rule },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    fn code(s: &str) -> MunicipalityCode {
        MunicipalityCode::parse(s).unwrap()
    }

    fn service() -> ServiceCode {
        ServiceCode::parse("ekonomiskt-bistand").unwrap()
    }

    fn agreement(from: Date, to: Date) -> Agreement {
        Agreement {
            id: "a1".into(),
            host: code("2462"),
            home: code("2403"),
            valid_from: from,
            valid_to: to,
            reference: "test".into(),
            scopes: vec![(service(), Step::Meeting)],
        }
    }

    fn check(rule: Rule, host: &str, on: Date, agreements: &[Agreement], expect: &str) {
        let got = decide(
            rule,
            &code(host),
            &code("2403"),
            &service(),
            Step::Meeting,
            on,
            agreements,
        );
        let label = match &got {
            Decision::Home => "home".to_owned(),
            Decision::CrossBorder { agreement_id, .. } => {
                format!("cross:{}", agreement_id.as_deref().unwrap_or("-"))
            }
            Decision::Refused { .. } => "refused".to_owned(),
        };
        assert_eq!(label, expect, "{rule:?} host {host} on {on}");
    }

    #[test]
    fn each_rule_kind() {
        let a = [agreement(date(2026, 1, 1), date(2026, 12, 31))];
        let d = date(2026, 6, 1);
        check(Rule::HomeOnly, "2403", d, &a, "home");
        check(Rule::HomeOnly, "2462", d, &a, "refused");
        check(Rule::Open, "2462", d, &[], "cross:-");
        check(Rule::Agreement, "2462", d, &a, "cross:a1");
        check(Rule::Agreement, "2462", d, &[], "refused");
        check(Rule::Agreement, "2421", d, &a, "refused");
        check(Rule::Agreement, "2462", date(2027, 1, 1), &a, "refused");
        check(Rule::Agreement, "2462", date(2026, 12, 31), &a, "cross:a1");
    }

    #[test]
    fn an_agreement_covers_only_its_steps() {
        let a = [agreement(date(2026, 1, 1), date(2026, 12, 31))];
        let got = decide(
            Rule::Agreement,
            &code("2462"),
            &code("2403"),
            &service(),
            Step::Decision,
            date(2026, 6, 1),
            &a,
        );
        assert!(!got.allowed());
    }

    proptest! {
        /// An `agreement` rule is refused on every date outside the
        /// agreement's validity, and allowed on every date inside it.
        #[test]
        fn agreement_validity_is_respected(
            from_day in 0i32..2000,
            len in 0i32..800,
            probe in -100i32..3000,
        ) {
            let base = date(2024, 1, 1);
            let from = base.checked_add(jiff::Span::new().days(from_day)).unwrap();
            let to = from.checked_add(jiff::Span::new().days(len)).unwrap();
            let on = base.checked_add(jiff::Span::new().days(probe)).unwrap();
            let a = [agreement(from, to)];
            let got = decide(Rule::Agreement, &code("2462"), &code("2403"), &service(), Step::Meeting, on, &a);
            prop_assert_eq!(got.allowed(), from <= on && on <= to);
        }

        /// The home municipality may always act, whatever the rule.
        #[test]
        fn home_is_always_allowed(rule_ix in 0usize..3, probe in 0i32..1000) {
            let rule = Rule::ALL[rule_ix];
            let on = date(2025, 1, 1).checked_add(jiff::Span::new().days(probe)).unwrap();
            let got = decide(rule, &code("2403"), &code("2403"), &service(), Step::Decision, on, &[]);
            prop_assert_eq!(got, Decision::Home);
        }
    }
}
