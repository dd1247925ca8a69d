//! The delivery worker: claim due outbox rows, render and send each, record
//! the outcome. Delivery is at least once: a worker that dies between a send
//! and its record leaves the row to be sent again once its lease expires, and
//! the mail keeps its `Message-ID`, so the copy is recognisably the same mail.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use booking::outbox::{Message, NeutralTitle};
use booking::{Db, EmailAddress, Language};
use futures::StreamExt;
use jiff::Timestamp;
use lettre::message::Mailbox;
use rand::Rng;
use tokio::sync::Notify;

use crate::render::render_stamped;
use crate::transport::{build_email, message_id, Transport};
use crate::{NotifyError, Settings};
use booking::outbox::delivery::{self, Claimed};

/// Delivers the outbox. One per process is enough; several (on several
/// nodes) share the work safely.
pub struct Worker {
    db: Db,
    settings: Settings,
    transport: Transport,
    from: Mailbox,
    waker: Arc<Notify>,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Rows claimed; the rest of the fields add up to this.
    pub claimed: usize,
    pub sent: usize,
    /// Failed for now and due again after a backoff.
    pub retrying: usize,
    /// Parked as failed for an admin: a permanent SMTP error, an undecodable
    /// row, or the last allowed try.
    pub failed: usize,
    /// Reminders dropped because the meeting had started or the booking
    /// changed after the claim.
    pub superseded: usize,
}

impl Worker {
    /// Checks the settings and sets up the transport. No connection is made
    /// until the first send. Call it inside a tokio runtime: the SMTP
    /// connection pool starts a task.
    pub fn new(db: Db, settings: Settings) -> Result<Worker, NotifyError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|_| NotifyError::InvalidFrom(settings.from.clone()))?;
        let transport = Transport::from_settings(&settings)?;
        Ok(Worker {
            db,
            settings,
            transport,
            from,
            waker: Arc::new(Notify::new()),
        })
    }

    /// Wakes the worker between its polls, for a mail that should go out at
    /// once: whoever asked for a sign-in link is waiting for it.
    pub fn waker(&self) -> Arc<Notify> {
        self.waker.clone()
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Delivers until `shutdown` completes. A batch under way is finished
    /// first, so a clean stop leaves no row waiting for its lease to expire.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(transport = %self.transport.describe(), "mail delivery started");
        loop {
            let busy = match self.run_once(Timestamp::now()).await {
                Ok(report) => report.claimed >= self.batch_size(),
                Err(err) => {
                    tracing::warn!(error = %err, "mail delivery batch failed");
                    false
                }
            };
            // A full batch suggests more is due: go again at once, unless
            // asked to stop.
            let pause = if busy {
                Duration::ZERO
            } else {
                self.settings.poll_interval()
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = self.waker.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("mail delivery stopped");
    }

    /// Claims the rows due at `now` and delivers them, up to `concurrency` at
    /// a time. Tests pass a `now` in the future to skip over backoffs and
    /// leases.
    #[tracing::instrument(skip(self), fields(transport = %self.transport.describe()))]
    pub async fn run_once(&self, now: Timestamp) -> Result<DeliveryReport, NotifyError> {
        let now = now.as_second();
        let lease_until = now.saturating_add(self.settings.lease_secs as i64);
        let rows = delivery::claim(&self.db, now, lease_until, self.batch_size() as i64).await?;
        let mut report = DeliveryReport {
            claimed: rows.len(),
            ..DeliveryReport::default()
        };
        let concurrency = self.settings.concurrency.max(1) as usize;
        let mut outcomes = futures::stream::iter(rows)
            .map(|row| self.deliver(row, now))
            .buffer_unordered(concurrency);
        // Every outcome is recorded before an error is returned, so one
        // database hiccup does not leave the rest of the batch unrecorded.
        let mut first_error = None;
        while let Some(outcome) = outcomes.next().await {
            match outcome {
                Ok(Outcome::Sent) => report.sent += 1,
                Ok(Outcome::Retrying) => report.retrying += 1,
                Ok(Outcome::Failed) => report.failed += 1,
                Ok(Outcome::Superseded) => report.superseded += 1,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err.into());
        }
        if report.claimed > 0 {
            tracing::info!(?report, "mail batch delivered");
        }
        Ok(report)
    }

    fn batch_size(&self) -> usize {
        self.settings.batch_size.max(1) as usize
    }

    async fn deliver(&self, row: Claimed, now: i64) -> Result<Outcome, sqlx::Error> {
        let (message, recipient, language, discreet) = match decode(&row) {
            Ok(decoded) => decoded,
            Err(reason) => {
                tracing::error!(id = %row.id, %reason, "undecodable outbox row parked");
                delivery::park(&self.db, &row.id, &reason).await?;
                return Ok(Outcome::Failed);
            }
        };
        let (message, language) = match message {
            Message::SignInRequest { registration } => {
                match booking::accounts::answer_sign_in_request(
                    &self.db,
                    &row.id,
                    &recipient,
                    registration.as_ref(),
                    now,
                )
                .await
                {
                    Ok(Some(answer)) => answer,
                    // Nobody has the address: nothing to send, and nothing
                    // the asker could tell apart from a sent link.
                    Ok(None) => {
                        delivery::supersede(&self.db, &row.id).await?;
                        return Ok(Outcome::Superseded);
                    }
                    Err(booking::Error::Db(e)) => return Err(e),
                    Err(e) => {
                        let reason = format!("sign-in request: {e}");
                        delivery::park(&self.db, &row.id, &reason).await?;
                        return Ok(Outcome::Failed);
                    }
                }
            }
            other => (other, language),
        };
        if let Message::Reminder { starts_at, .. } = &message {
            // A reminder that comes due only after the meeting began (the
            // worker was down, or retries ran long) would only confuse.
            if now >= *starts_at {
                delivery::supersede(&self.db, &row.id).await?;
                return Ok(Outcome::Superseded);
            }
            // `booking` supersedes reminders when a meeting moves or is
            // cancelled, which may have happened since the claim.
            if !delivery::still_pending(&self.db, &row.id).await? {
                return Ok(Outcome::Superseded);
            }
        }
        let created = Timestamp::from_second(row.created_at).unwrap_or(Timestamp::UNIX_EPOCH);
        let mail = render_stamped(&message, language, discreet, &self.settings, created);
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
        let id = message_id(&row.id, &self.settings);
        // A discreet mail keeps the configured address but not its name,
        // which may say "Socialtjänsten".
        let from = match &mail.sender_name {
            Some(name) => Mailbox::new(Some(name.clone()), self.from.email.clone()),
            None => self.from.clone(),
        };
        let email = match build_email(&mail, &from, &recipient, &id, date) {
            Ok(email) => email,
            Err(reason) => {
                delivery::park(&self.db, &row.id, &reason).await?;
                return Ok(Outcome::Failed);
            }
        };
        match self.transport.send(&email, &row.id).await {
            Ok(()) => {
                delivery::mark_sent(&self.db, &row.id, now).await?;
                Ok(Outcome::Sent)
            }
            Err(failure)
                if failure.permanent || row.attempts >= i64::from(self.settings.max_attempts) =>
            {
                tracing::warn!(id = %row.id, attempts = row.attempts, reason = %failure.reason, "mail parked as failed");
                delivery::park(&self.db, &row.id, &failure.reason).await?;
                Ok(Outcome::Failed)
            }
            Err(failure) => {
                let delay = retry_delay(
                    row.attempts,
                    self.settings.retry_base_secs,
                    self.settings.retry_max_secs,
                    &mut rand::thread_rng(),
                );
                tracing::info!(id = %row.id, attempts = row.attempts, delay, reason = %failure.reason, "mail will be retried");
                delivery::retry_later(
                    &self.db,
                    &row.id,
                    now.saturating_add(delay as i64),
                    &failure.reason,
                )
                .await?;
                Ok(Outcome::Retrying)
            }
        }
    }
}

enum Outcome {
    Sent,
    Retrying,
    Failed,
    Superseded,
}

type Decoded = (Message, EmailAddress, Language, Option<NeutralTitle>);

fn decode(row: &Claimed) -> Result<Decoded, String> {
    let message: Message =
        serde_json::from_str(&row.payload).map_err(|err| format!("payload: {err}"))?;
    let recipient = EmailAddress::parse(&row.recipient).map_err(|err| err.to_string())?;
    let language = Language::parse(&row.language).map_err(|err| err.to_string())?;
    let discreet = row
        .discreet
        .as_deref()
        .map(NeutralTitle::parse)
        .transpose()
        .map_err(|err| err.to_string())?;
    Ok((message, recipient, language, discreet))
}

/// Seconds to wait after the `attempts`-th failed try: `base` doubled for
/// each earlier try, capped at `max`, then drawn from its upper half so that
/// rows failed by one outage do not all come back at the same second.
pub(crate) fn retry_delay(attempts: i64, base: u64, max: u64, rng: &mut impl Rng) -> u64 {
    let doublings = attempts.saturating_sub(1).clamp(0, 32) as u32;
    let nominal = base
        .max(1)
        .saturating_mul(1u64 << doublings)
        .min(max.max(1));
    rng.gen_range(nominal.div_ceil(2)..=nominal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn delays_double_until_the_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        let spans: Vec<(u64, u64)> = (1..=9)
            .map(|attempt| {
                let draws: Vec<u64> = (0..200)
                    .map(|_| retry_delay(attempt, 30, 3600, &mut rng))
                    .collect();
                (*draws.iter().min().unwrap(), *draws.iter().max().unwrap())
            })
            .collect();
        let nominal = [30, 60, 120, 240, 480, 960, 1920, 3600, 3600];
        for (attempt, ((low, high), nominal)) in spans.iter().zip(nominal).enumerate() {
            assert!(
                *low >= nominal / 2 && *high <= nominal,
                "try {}: drew {low}..={high}, nominal {nominal}",
                attempt + 1
            );
            // Jitter spreads the draws over the upper half of the span.
            assert!(
                high - low > nominal / 4,
                "try {}: too little jitter",
                attempt + 1
            );
        }
    }

    proptest! {
        #[test]
        fn delays_stay_within_half_and_whole_of_the_nominal(
            attempts in -3i64..100,
            base in 0u64..10_000,
            max in 0u64..100_000,
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = retry_delay(attempts, base, max, &mut rng);
            let nominal = base.max(1)
                .saturating_mul(1u64 << attempts.saturating_sub(1).clamp(0, 32))
                .min(max.max(1));
            prop_assert!(delay >= 1);
            prop_assert!(delay <= nominal && delay >= nominal.div_ceil(2));
        }
    }
}
