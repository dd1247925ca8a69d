//! Staff accounts (argon2 passwords) and residents (one-time email links).

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::audit::{self, Actor, Entry, Outcome};
use crate::db::Db;
use crate::domain::{
    EmailAddress, Language, MunicipalityCode, NewPassword, Password, PersonName, Role, ServiceCode,
};
use crate::ids;
use crate::outbox::{self, Message, Registration};
use crate::sessions::{self, SessionId, Subject};
use crate::{Error, ResidentId, StaffId};

pub use crate::records::Staff;

/// What is needed to create a staff account.
#[derive(Debug, Clone)]
pub struct NewStaff {
    pub municipality: MunicipalityCode,
    pub email: EmailAddress,
    pub name: PersonName,
    pub role: Role,
    pub services: Vec<ServiceCode>,
    pub languages: Vec<Language>,
    pub password_hash: PasswordHashText,
}

/// An argon2 PHC string. Made by [`hash_password`], which is slow on purpose,
/// so callers can hash once and reuse it (the demo seed does).
#[derive(Debug, Clone)]
pub struct PasswordHashText(String);

/// Hashes `password` with argon2id on a blocking thread. Only a
/// [`NewPassword`] can be hashed, so every account's password passed the
/// length and common-password rules.
pub async fn hash_password(password: &NewPassword) -> Result<PasswordHashText, Error> {
    let password = password.clone();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| PasswordHashText(h.to_string()))
            .map_err(|e| Error::Corrupt(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| Error::Corrupt(format!("hashing task: {e}")))?
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resident {
    pub id: ResidentId,
    pub email: EmailAddress,
    pub name: String,
    pub home: MunicipalityCode,
    pub language: Language,
    /// Whether every mail about the resident's bookings goes out discreet,
    /// under a neutral title, whatever the service.
    pub discreet_mail: bool,
}

pub async fn create_staff(db: &Db, new: &NewStaff, now: i64) -> Result<Staff, Error> {
    let id: StaffId = ids::from_uuid(uuid::Uuid::new_v4());
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO staff (id, municipality_code, email, name, role, password_hash, max_chats, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 3, $7)",
    )
    .bind(id.as_str())
    .bind(new.municipality.as_str())
    .bind(new.email.as_str())
    .bind(new.name.as_str())
    .bind(new.role.as_str())
    .bind(&new.password_hash.0)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(|e| Error::from_unique(e, "a staff account with that email exists"))?;
    for s in &new.services {
        sqlx::query("INSERT INTO staff_services (staff_id, service_code) VALUES ($1, $2)")
            .bind(id.as_str())
            .bind(s.as_str())
            .execute(&mut *tx)
            .await?;
    }
    for l in &new.languages {
        sqlx::query("INSERT INTO staff_languages (staff_id, language) VALUES ($1, $2)")
            .bind(id.as_str())
            .bind(l.code())
            .execute(&mut *tx)
            .await?;
    }
    crate::db::catalog_changed(&mut tx).await?;
    tx.commit().await?;
    Ok(Staff {
        id,
        municipality: new.municipality.clone(),
        email: new.email.clone(),
        name: new.name.to_string(),
        role: new.role,
        services: new.services.clone(),
        languages: new.languages.clone(),
        max_chats: 3,
    })
}

/// Every staff account, with services and languages.
pub async fn all_staff(db: &Db) -> Result<Vec<Staff>, Error> {
    staff_where(db, None).await
}

pub async fn staff_by_id(db: &Db, id: &StaffId) -> Result<Option<Staff>, Error> {
    Ok(staff_where(db, Some(id)).await?.into_iter().next())
}

async fn staff_where(db: &Db, id: Option<&StaffId>) -> Result<Vec<Staff>, Error> {
    let id = id.map(StaffId::as_str);
    let rows = sqlx::query(
        "SELECT id, municipality_code, email, name, role, max_chats FROM staff \
         WHERE ($1 IS NULL OR id = $1) ORDER BY id",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    let services = sqlx::query(
        "SELECT staff_id, service_code FROM staff_services WHERE ($1 IS NULL OR staff_id = $1)",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    let languages = sqlx::query(
        "SELECT staff_id, language FROM staff_languages WHERE ($1 IS NULL OR staff_id = $1)",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut staff = staff_from_row(r)?;
        for s in &services {
            if s.try_get::<String, _>("staff_id")? == staff.id.as_str() {
                staff.services.push(ServiceCode::parse(
                    &s.try_get::<String, _>("service_code")?,
                )?);
            }
        }
        for l in &languages {
            if l.try_get::<String, _>("staff_id")? == staff.id.as_str() {
                staff
                    .languages
                    .push(Language::parse(&l.try_get::<String, _>("language")?)?);
            }
        }
        staff.services.sort();
        staff.languages.sort();
        out.push(staff);
    }
    Ok(out)
}

fn staff_from_row(r: &AnyRow) -> Result<Staff, Error> {
    Ok(Staff {
        id: ids::stored(r, "id")?,
        municipality: MunicipalityCode::parse(&r.try_get::<String, _>("municipality_code")?)?,
        email: EmailAddress::parse(&r.try_get::<String, _>("email")?)?,
        name: r.try_get("name")?,
        role: Role::parse(&r.try_get::<String, _>("role")?)?,
        services: Vec::new(),
        languages: Vec::new(),
        max_chats: r.try_get("max_chats")?,
    })
}

/// The id of the staff account with address `email`, active or not.
pub async fn staff_id_by_email(db: &Db, email: &EmailAddress) -> Result<Option<StaffId>, Error> {
    let row = sqlx::query("SELECT id FROM staff WHERE email = $1")
        .bind(email.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.map(|r| ids::stored(&r, "id")).transpose()
}

/// Checks a staff member's password. An unknown email costs the same argon2
/// work as a wrong password, so timing does not reveal which accounts exist.
pub async fn verify_staff_password(
    db: &Db,
    email: &EmailAddress,
    password: &Password,
) -> Result<Option<Staff>, Error> {
    // A deactivated account is treated as unknown: the same work, no session.
    let row = sqlx::query(
        "SELECT id, password_hash FROM staff WHERE email = $1 AND deactivated_at IS NULL",
    )
    .bind(email.as_str())
    .fetch_optional(db.pool())
    .await?;
    let (id, hash) = match row {
        Some(r) => (
            Some(ids::stored::<StaffId>(&r, "id")?),
            r.try_get::<String, _>("password_hash")?,
        ),
        None => (None, DUMMY_HASH.to_owned()),
    };
    let password = password.clone();
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| Error::Corrupt(format!("verify task: {e}")))?;
    match (id, matches) {
        (Some(id), true) => staff_by_id(db, &id).await,
        _ => Ok(None),
    }
}

/// Deactivates a staff account: it can no longer sign in, and its sessions
/// end, in one transaction with the audit entry naming `actor` (an admin,
/// or the system for the command line). Returns the sessions it ended, so
/// the caller can tell the caches of other nodes. An unknown or already
/// deactivated account is `NotFound`.
pub async fn deactivate_staff(
    db: &Db,
    actor: &Actor,
    staff_id: &StaffId,
    now: i64,
) -> Result<Vec<SessionId>, Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let done = sqlx::query(
        "UPDATE staff SET deactivated_at = $1 WHERE id = $2 AND deactivated_at IS NULL",
    )
    .bind(now)
    .bind(staff_id.as_str())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    let ended = sessions::revoke_all_on(&mut tx, &Subject::Staff(staff_id.clone()), now).await?;
    let entry = Entry {
        actor,
        action: "staff.deactivate",
        subject: format!("staff:{staff_id}"),
        resident_id: None,
        on_behalf_of: None,
        rule: None,
        agreement_id: None,
        outcome: Outcome::Allowed,
    };
    audit::record(&mut tx, &entry, now).await?;
    tx.commit().await?;
    Ok(ended)
}

/// A valid argon2id hash of a random password nobody knows, verified against
/// when the email is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Vqlq5vRk4QWs3zsdoVpMDu4yMU5lVw5tpZJ8fyIOdeg";

pub async fn create_resident(
    db: &Db,
    email: &EmailAddress,
    name: &PersonName,
    home: &MunicipalityCode,
    language: Language,
    now: i64,
) -> Result<Resident, Error> {
    let id: ResidentId = ids::from_uuid(uuid::Uuid::new_v4());
    let _turn = db.write_turn().await;
    sqlx::query(
        "INSERT INTO residents (id, email, name, home_code, language, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_str())
    .bind(email.as_str())
    .bind(name.as_str())
    .bind(home.as_str())
    .bind(language.code())
    .bind(now)
    .execute(db.pool())
    .await
    .map_err(|e| Error::from_unique(e, "a resident with that email exists"))?;
    Ok(Resident {
        id,
        email: email.clone(),
        name: name.to_string(),
        home: home.clone(),
        language,
        discreet_mail: false,
    })
}

pub async fn resident_by_id(db: &Db, id: &ResidentId) -> Result<Option<Resident>, Error> {
    let row = sqlx::query(
        "SELECT id, email, name, home_code, language, discreet_mail FROM residents WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(resident_from_row).transpose()
}

pub async fn resident_by_email(db: &Db, email: &EmailAddress) -> Result<Option<Resident>, Error> {
    let row =
        sqlx::query("SELECT id, email, name, home_code, language, discreet_mail FROM residents WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(db.pool())
            .await?;
    row.as_ref().map(resident_from_row).transpose()
}

fn resident_from_row(r: &AnyRow) -> Result<Resident, Error> {
    Ok(Resident {
        id: ids::stored(r, "id")?,
        email: EmailAddress::parse(&r.try_get::<String, _>("email")?)?,
        name: r.try_get("name")?,
        home: MunicipalityCode::parse(&r.try_get::<String, _>("home_code")?)?,
        language: Language::parse(&r.try_get::<String, _>("language")?)?,
        discreet_mail: r.try_get::<i64, _>("discreet_mail")? != 0,
    })
}

/// Turns the resident's "discreet mail for all my bookings" on or off.
/// Turning it on also makes the mails already queued about their bookings
/// (reminders, mostly) discreet, each under its booking's neutral title, so
/// that no mail written before the choice still names the social services.
/// Turning it off leaves queued mails discreet: a discreet mail too many is
/// harmless, one too few is not.
pub async fn set_discreet_mail(db: &Db, resident: &Resident, on: bool) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query("UPDATE residents SET discreet_mail = $1 WHERE id = $2")
        .bind(i64::from(on))
        .bind(resident.id.as_str())
        .execute(&mut *tx)
        .await?;
    if on {
        sqlx::query(
            "UPDATE outbox SET discreet = COALESCE(\
                 (SELECT neutral_title FROM bookings WHERE bookings.id = outbox.booking_id), 'meeting') \
             WHERE recipient = $1 AND status = 'pending' AND booking_id IS NOT NULL AND discreet IS NULL",
        )
        .bind(resident.email.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// How long a sign-in link works.
pub const SIGN_IN_LINK_SECONDS: i64 = 15 * 60;

/// Puts a request for a sign-in link to `email` in the outbox, without
/// looking the address up: the same one insert whoever asks, so that
/// neither the answer nor its timing tells whether the address is known.
/// The delivery worker answers it ([`answer_sign_in_request`]).
pub async fn request_sign_in_link(
    db: &Db,
    email: &EmailAddress,
    language: Language,
    registration: Option<Registration>,
    now: i64,
) -> Result<(), Error> {
    let message = Message::SignInRequest { registration };
    let _turn = db.write_turn().await;
    let mut conn = db.pool().acquire().await?;
    outbox::enqueue(&mut conn, email, language, &message, None, now, now).await?;
    Ok(())
}

/// Answers a [`Message::SignInRequest`] outbox row `outbox_id` for
/// `email`, on behalf of the delivery worker: for a resident (registered
/// now from `registration` when the address is new), a sign-in link is made
/// and the row becomes its [`Message::SignInLink`], in one transaction, so
/// a retried delivery sends the same link. Returns the message and the
/// language to send it in, or `None` when nobody has the address and no
/// registration came with it (the row is then left for the caller to drop).
pub async fn answer_sign_in_request(
    db: &Db,
    outbox_id: &str,
    email: &EmailAddress,
    registration: Option<&Registration>,
    now: i64,
) -> Result<Option<(Message, Language)>, Error> {
    let resident = match (resident_by_email(db, email).await?, registration) {
        (Some(resident), _) => resident,
        (None, Some(r)) => {
            match create_resident(db, email, &r.name, &r.home, r.language, now).await {
                Ok(resident) => resident,
                // Registered by another request since the look-up.
                Err(Error::Conflict(_)) => resident_by_email(db, email)
                    .await?
                    .ok_or_else(|| Error::Corrupt("a resident vanished".into()))?,
                Err(e) => return Err(e),
            }
        }
        (None, None) => return Ok(None),
    };
    let token = random_token();
    let expires_at = now + SIGN_IN_LINK_SECONDS;
    let message = Message::SignInLink {
        token: token.clone(),
        expires_at,
    };
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO sign_in_links (token_hash, resident_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(token_hash(&token))
    .bind(resident.id.as_str())
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE outbox SET kind = $1, payload = $2, language = $3 WHERE id = $4")
        .bind(message.kind())
        .bind(serde_json::to_string(&message).expect("a Message always serialises"))
        .bind(resident.language.code())
        .bind(outbox_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some((message, resident.language)))
}

/// Redeems a sign-in link once. An unknown, used or expired token yields `None`.
pub async fn redeem_sign_in_link(
    db: &Db,
    token: &str,
    now: i64,
) -> Result<Option<Resident>, Error> {
    // One UPDATE both checks and spends the token, so two redemptions racing
    // cannot both succeed.
    let turn = db.write_turn().await;
    let row = sqlx::query(
        "UPDATE sign_in_links SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING resident_id",
    )
    .bind(now)
    .bind(token_hash(token))
    .fetch_optional(db.pool())
    .await?;
    drop(turn);
    match row {
        Some(r) => resident_by_id(db, &ids::stored(&r, "resident_id")?).await,
        None => Ok(None),
    }
}

/// 32 random bytes, URL-safe base64: unguessable tokens for links.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Tokens are stored only as SHA-256, so a database leak does not leak links.
pub(crate) fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod capability_tests {
    use super::*;

    fn staff(id: &str, municipality: &str, role: Role) -> Staff {
        Staff {
            id: StaffId::parse(id).unwrap(),
            municipality: MunicipalityCode::parse(municipality).unwrap(),
            email: EmailAddress::parse(&format!("{id}@example.se")).unwrap(),
            name: id.to_owned(),
            role,
            services: Vec::new(),
            languages: Vec::new(),
            max_chats: 2,
        }
    }

    #[test]
    fn what_each_role_may_do() {
        let worker = staff("w", "2481", Role::Staff);
        let colleague = staff("c", "2481", Role::Staff);
        let elsewhere = staff("e", "1283", Role::Staff);
        let scheduler = staff("s", "2481", Role::Scheduler);
        let admin = staff("a", "1283", Role::Admin);

        assert!(!worker.may_see_load() && scheduler.may_see_load() && admin.may_see_load());
        for actor in [&worker, &scheduler] {
            assert!(!actor.may_read_audit_log() && !actor.may_deactivate_staff());
        }
        assert!(admin.may_read_audit_log() && admin.may_deactivate_staff());

        // A social worker reads their own templates and changes none.
        assert!(worker.may_read_templates_of(&worker));
        assert!(!worker.may_change_templates_of(&worker));
        assert!(!worker.may_read_templates_of(&colleague));
        // A scheduler manages their own municipality's, and nobody else's.
        assert!(scheduler.may_change_templates_of(&colleague));
        assert!(scheduler.may_read_templates_of(&colleague));
        assert!(!scheduler.may_read_templates_of(&elsewhere));
        assert!(!scheduler.may_change_templates_of(&elsewhere));
        // An admin manages everyone's.
        assert!(admin.may_change_templates_of(&colleague));
        assert!(admin.may_change_templates_of(&elsewhere));
    }
}
