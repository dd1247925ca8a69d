//! Slot generation: weekly availability templates cut into bookable times.
//!
//! A template is a window in the staff member's local time (for example
//! Tuesdays 08:30–12:00 in Europe/Stockholm). Slots are stepped in absolute
//! time from the window's real start, so a window on a daylight-saving day is
//! an hour shorter or longer, never doubled or skipped, and every slot lasts
//! exactly the service's length.
//!
//! The templates themselves are stored in `availability_templates`; the
//! functions at the bottom read, add and delete them.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use sqlx::Row;

use crate::catalog;
use crate::db::Db;
use crate::domain::SlotRange;
use crate::ids;
use crate::{Error, StaffId};

pub use crate::records::Template;

/// How a service cuts windows: each meeting lasts `slot_minutes`, and
/// `buffer_minutes` are kept free after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotShape {
    pub slot_minutes: i64,
    pub buffer_minutes: i64,
}

/// The slots of `templates` for every date in `from..=to`, sorted and never
/// overlapping. Templates that overlap each other yield the earlier slot.
pub fn generate(
    templates: &[Template],
    shape: SlotShape,
    from: Date,
    to: Date,
    tz: &TimeZone,
) -> Vec<SlotRange> {
    let mut slots = Vec::new();
    if shape.slot_minutes <= 0 || shape.buffer_minutes < 0 {
        return slots;
    }
    let length = shape.slot_minutes * 60;
    let step = (shape.slot_minutes + shape.buffer_minutes) * 60;
    let mut date = from;
    while date <= to {
        for template in templates {
            let Some((start, end)) = template.window_on(date, tz) else {
                continue;
            };
            let mut at = start.as_second();
            while at + length <= end.as_second() {
                if let Ok(range) = SlotRange::from_unix(at, at + length) {
                    slots.push(range);
                }
                at += step;
            }
        }
        let Ok(next) = date.checked_add(Span::new().days(1)) else {
            break;
        };
        date = next;
    }
    slots.sort();
    // Drop any slot that overlaps the one kept before it, so that two
    // overlapping templates of one staff member never offer the same time twice.
    let mut kept: Vec<SlotRange> = Vec::with_capacity(slots.len());
    for slot in slots {
        if kept.last().is_none_or(|last| !last.overlaps(&slot)) {
            kept.push(slot);
        }
    }
    kept
}

/// The slot starting at `start` among [`generate`]'s slots for `date`, if
/// there is one, without cutting the whole day into slots. Booking asks this
/// of every staff member who might take a time, and cutting each one's day
/// cost more than a tenth of the server's CPU per booking. When the day's
/// windows do not overlap, no slot overlaps another and `generate` keeps them
/// all, so the slot is there if `start` lies on its window's steps; when they
/// do overlap, which slots `generate` keeps depends on the ones before, and
/// the day is cut as `generate` cuts it.
pub fn slot_at(
    templates: &[Template],
    shape: SlotShape,
    date: Date,
    start: Timestamp,
    tz: &TimeZone,
) -> Option<SlotRange> {
    if shape.slot_minutes <= 0 || shape.buffer_minutes < 0 {
        return None;
    }
    let windows: Vec<(i64, i64)> = templates
        .iter()
        .filter_map(|t| t.window_on(date, tz))
        .map(|(s, e)| (s.as_second(), e.as_second()))
        .collect();
    let overlapping = windows
        .iter()
        .enumerate()
        .any(|(i, &(s1, e1))| windows[i + 1..].iter().any(|&(s2, e2)| s1 < e2 && s2 < e1));
    if overlapping {
        return generate(templates, shape, date, date, tz)
            .into_iter()
            .find(|r| r.start() == start);
    }
    let length = shape.slot_minutes * 60;
    let step = (shape.slot_minutes + shape.buffer_minutes) * 60;
    let at = start.as_second();
    windows
        .iter()
        .find(|&&(s, e)| s <= at && (at - s) % step == 0 && at + length <= e)
        .and_then(|_| SlotRange::from_unix(at, at + length).ok())
}

// ---------------------------------------------------------------------------
// Availability templates in the database

/// Every availability template.
pub async fn all_templates(db: &Db) -> Result<Vec<Template>, Error> {
    templates_where(db, None).await
}

/// One staff member's availability templates.
pub async fn templates_for(db: &Db, staff_id: &StaffId) -> Result<Vec<Template>, Error> {
    templates_where(db, Some(staff_id)).await
}

async fn templates_where(db: &Db, staff_id: Option<&StaffId>) -> Result<Vec<Template>, Error> {
    let rows = sqlx::query(
        "SELECT id, staff_id, weekday, start_minute, end_minute, valid_from, valid_to FROM availability_templates \
         WHERE ($1 IS NULL OR staff_id = $1) ORDER BY staff_id, weekday, start_minute",
    )
    .bind(staff_id.map(StaffId::as_str))
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Template {
                id: r.try_get("id")?,
                staff_id: ids::stored(r, "staff_id")?,
                weekday: r.try_get::<i64, _>("weekday")? as i8,
                start_minute: r.try_get::<i64, _>("start_minute")? as i16,
                end_minute: r.try_get::<i64, _>("end_minute")? as i16,
                valid_from: catalog::parse_date(&r.try_get::<String, _>("valid_from")?)?,
                valid_to: catalog::parse_date(&r.try_get::<String, _>("valid_to")?)?,
            })
        })
        .collect()
}

/// Adds a template after checking it does not overlap the staff member's
/// other windows on the same weekday and dates.
pub async fn add_template(db: &Db, template: &Template) -> Result<Template, Error> {
    template.validate()?;
    let existing = templates_for(db, &template.staff_id).await?;
    let clash = existing.iter().any(|t| {
        t.weekday == template.weekday
            && t.start_minute < template.end_minute
            && template.start_minute < t.end_minute
            && t.valid_from <= template.valid_to
            && template.valid_from <= t.valid_to
    });
    if clash {
        return Err(Error::Conflict(
            "the window overlaps another window of the same staff member".into(),
        ));
    }
    let mut stored = template.clone();
    stored.id = uuid::Uuid::new_v4().to_string();
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO availability_templates (id, staff_id, weekday, start_minute, end_minute, valid_from, valid_to) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&stored.id)
    .bind(stored.staff_id.as_str())
    .bind(i64::from(stored.weekday))
    .bind(i64::from(stored.start_minute))
    .bind(i64::from(stored.end_minute))
    .bind(stored.valid_from.to_string())
    .bind(stored.valid_to.to_string())
    .execute(&mut *tx)
    .await?;
    crate::db::catalog_changed(&mut tx).await?;
    tx.commit().await?;
    Ok(stored)
}

pub async fn delete_template(db: &Db, staff_id: &StaffId, id: &str) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let done = sqlx::query("DELETE FROM availability_templates WHERE id = $1 AND staff_id = $2")
        .bind(id)
        .bind(staff_id.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    crate::db::catalog_changed(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    fn stockholm() -> TimeZone {
        TimeZone::get("Europe/Stockholm").unwrap()
    }

    fn template(weekday: i8, start: i16, end: i16) -> Template {
        Template {
            id: "t".into(),
            staff_id: StaffId::parse("s").unwrap(),
            weekday,
            start_minute: start,
            end_minute: end,
            valid_from: date(2020, 1, 1),
            valid_to: date(2035, 12, 31),
        }
    }

    fn local_times(slots: &[SlotRange]) -> Vec<String> {
        let tz = stockholm();
        slots
            .iter()
            .map(|s| {
                s.start()
                    .to_zoned(tz.clone())
                    .strftime("%H:%M%:z")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_morning_window_on_an_ordinary_day() {
        // 2026-03-24 is a Tuesday.
        let day = date(2026, 3, 24);
        let slots = generate(
            &[template(2, 8 * 60, 10 * 60)],
            SlotShape {
                slot_minutes: 45,
                buffer_minutes: 15,
            },
            day,
            day,
            &stockholm(),
        );
        assert_eq!(local_times(&slots), ["08:00+01:00", "09:00+01:00"]);
    }

    #[test]
    fn spring_and_autumn_daylight_saving_days() {
        let shape = SlotShape {
            slot_minutes: 60,
            buffer_minutes: 0,
        };
        // Sunday 2026-03-29: clocks go from 02:00 to 03:00.
        let spring = date(2026, 3, 29);
        let slots = generate(
            &[template(7, 0, 6 * 60)],
            shape,
            spring,
            spring,
            &stockholm(),
        );
        assert_eq!(
            local_times(&slots),
            [
                "00:00+01:00",
                "01:00+01:00",
                "03:00+02:00",
                "04:00+02:00",
                "05:00+02:00"
            ]
        );
        // Sunday 2026-10-25: clocks go from 03:00 back to 02:00.
        let autumn = date(2026, 10, 25);
        let slots = generate(
            &[template(7, 0, 4 * 60)],
            shape,
            autumn,
            autumn,
            &stockholm(),
        );
        assert_eq!(
            local_times(&slots),
            [
                "00:00+02:00",
                "01:00+02:00",
                "02:00+02:00",
                "02:00+01:00",
                "03:00+01:00"
            ]
        );
        // A daytime window starts at the same local time either side.
        let daytime = |d| {
            let s = generate(&[template(7, 9 * 60, 10 * 60)], shape, d, d, &stockholm());
            local_times(&s)
        };
        assert_eq!(daytime(spring), ["09:00+02:00"]);
        assert_eq!(daytime(autumn), ["09:00+01:00"]);
    }

    #[test]
    fn published_minutes_follow_the_clock() {
        let all_night = template(7, 0, 1440);
        assert_eq!(
            all_night.minutes_on(date(2026, 3, 29), &stockholm()),
            23 * 60
        );
        assert_eq!(
            all_night.minutes_on(date(2026, 10, 25), &stockholm()),
            25 * 60
        );
        assert_eq!(
            all_night.minutes_on(date(2026, 10, 18), &stockholm()),
            24 * 60
        );
        assert_eq!(all_night.minutes_on(date(2026, 10, 19), &stockholm()), 0);
    }

    #[test]
    fn templates_outside_their_validity_yield_nothing() {
        let mut t = template(2, 480, 600);
        t.valid_to = date(2026, 3, 23);
        let day = date(2026, 3, 24);
        let shape = SlotShape {
            slot_minutes: 30,
            buffer_minutes: 0,
        };
        assert!(generate(&[t], shape, day, day, &stockholm()).is_empty());
    }

    fn arb_template() -> impl Strategy<Value = Template> {
        (1i8..=7, 0i16..1439, 1i16..=1440).prop_filter_map("start before end", |(w, s, e)| {
            (s < e).then(|| template(w, s, e))
        })
    }

    proptest! {
        /// Whatever the templates and whichever weeks (including both
        /// daylight-saving changes), slots never overlap, each lasts exactly
        /// the service length, and each lies inside its template's window.
        #[test]
        fn slots_never_overlap_and_have_the_service_length(
            templates in proptest::collection::vec(arb_template(), 1..5),
            slot in 5i64..120,
            buffer in 0i64..30,
            start_day in prop_oneof![Just(date(2026, 3, 23)), Just(date(2026, 10, 19)), Just(date(2027, 3, 22)), Just(date(2026, 6, 1))],
        ) {
            let tz = stockholm();
            let to = start_day.checked_add(Span::new().days(13)).unwrap();
            let shape = SlotShape { slot_minutes: slot, buffer_minutes: buffer };
            let slots = generate(&templates, shape, start_day, to, &tz);
            for pair in slots.windows(2) {
                prop_assert!(pair[0].end() <= pair[1].start(), "{:?} overlaps {:?}", pair[0], pair[1]);
            }
            for s in &slots {
                prop_assert_eq!(s.minutes(), slot);
                let local = s.start().to_zoned(tz.clone());
                let inside = templates.iter().any(|t| {
                    t.window_on(local.date(), &tz)
                        .is_some_and(|(ws, we)| ws <= s.start() && s.end() <= we)
                });
                prop_assert!(inside, "{s:?} lies in no window");
            }
        }

        /// The slot at a time is the one `generate` cuts there, whether the
        /// windows overlap or not and on daylight-saving days too: asked at
        /// every slot's start and at times just off them, and at the start
        /// of each window.
        #[test]
        fn the_slot_at_a_time_is_the_one_the_day_is_cut_into(
            templates in proptest::collection::vec(arb_template(), 1..5),
            slot in 5i64..120,
            buffer in 0i64..30,
            day in prop_oneof![Just(date(2026, 3, 29)), Just(date(2026, 10, 25)), Just(date(2026, 6, 1)), Just(date(2026, 6, 3))],
        ) {
            let tz = stockholm();
            // Most windows fall on the day, so that they often overlap.
            let templates: Vec<Template> = templates
                .into_iter()
                .map(|t| Template {
                    weekday: if t.weekday % 2 == 1 { day.weekday().to_monday_one_offset() } else { t.weekday },
                    ..t
                })
                .collect();
            let shape = SlotShape { slot_minutes: slot, buffer_minutes: buffer };
            let slots = generate(&templates, shape, day, day, &tz);
            let mut asked: Vec<i64> = Vec::new();
            for s in &slots {
                let t = s.start().as_second();
                asked.extend([t, t - 60, t + 60, t + slot * 60, t - (slot + buffer) * 60]);
            }
            for t in &templates {
                if let Some((ws, we)) = t.window_on(day, &tz) {
                    asked.extend([ws.as_second(), we.as_second(), ws.as_second() + 60]);
                }
            }
            for at in asked {
                let start = Timestamp::from_second(at).unwrap();
                let expected = slots.iter().copied().find(|r| r.start() == start);
                prop_assert_eq!(slot_at(&templates, shape, day, start, &tz), expected, "at {}", start);
            }
        }
    }
}
