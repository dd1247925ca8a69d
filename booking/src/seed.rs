//! Demo data: the eight inland municipalities of Västerbotten and Helsingborg,
//! five services whose steps follow different cross-border rules, agreements
//! between some of the municipalities, and staff with two weeks of
//! availability from the seeding day.

use jiff::civil::{date, Date};
use jiff::Span;
use sqlx::Row;

use crate::accounts::{self, NewStaff};
use crate::bookings;
use crate::catalog::{self, Municipality, Service};
use crate::chats::CannedResponse;
use crate::db::Db;
use crate::domain::{
    EmailAddress, Language, MunicipalityCode, NewPassword, PersonName, Role, Rule, ServiceCode,
    Step,
};
use crate::policy::Agreement;
use crate::slots::{self, Template};
use crate::Error;

/// The password of every demo staff account. It is printed at start and must
/// never be used outside demo mode.
pub const DEMO_PASSWORD: &str = "kontakt-demo";

/// The mail domain of every demo staff account. `.demo` is no real
/// top-level domain, so no real account has an address there, and the demo's
/// accounts can be told from real ones by their address alone.
pub const DEMO_STAFF_DOMAIN: &str = "kontakt.demo";

/// The demo residents: (email, name, home kommunkod, language).
const DEMO_RESIDENTS: [(&str, &str, &str, Language); 4] = [
    ("anna@example.se", "Anna Lindqvist", "2418", Language::Sv),
    ("erik@example.se", "Erik Holm", "1283", Language::Sv),
    ("leila@example.se", "Leila Haddad", "2481", Language::Ar),
    ("aino@example.se", "Aino Korhonen", "2422", Language::Fi),
];

/// The addresses of the accounts the demo seeded that are still in the
/// database, staff first. A production server refuses to start while there
/// are any: the staff password is published, and anyone may sign in as them.
pub async fn demo_accounts(db: &Db) -> Result<Vec<String>, Error> {
    let mut found = Vec::new();
    let staff = sqlx::query("SELECT email FROM staff WHERE email LIKE $1 ORDER BY email")
        .bind(format!("%@{DEMO_STAFF_DOMAIN}"))
        .fetch_all(db.pool())
        .await?;
    for row in &staff {
        found.push(row.try_get::<String, _>("email")?);
    }
    for (email, ..) in DEMO_RESIDENTS {
        if accounts::resident_by_email(db, &EmailAddress::parse(email)?)
            .await?
            .is_some()
        {
            found.push(email.to_owned());
        }
    }
    Ok(found)
}

/// A sign-in to print for newcomers.
#[derive(Debug, Clone)]
pub struct DemoSignIn {
    pub who: String,
    pub email: String,
    pub password: Option<String>,
}

/// The municipalities of the demo: (kommunkod, name).
pub const MUNICIPALITIES: [(&str, &str); 9] = [
    ("2425", "Dorotea"),
    ("2418", "Malå"),
    ("2417", "Norsjö"),
    ("2422", "Sorsele"),
    ("2421", "Storuman"),
    ("2462", "Vilhelmina"),
    ("2463", "Åsele"),
    ("2481", "Lycksele"),
    ("1283", "Helsingborg"),
];

const OPEN: &str = "Allmän information och rådgivning är inte myndighetsutövning och får ges av vilken deltagande kommun som helst (SoL 3 kap. 1 §).";
const AGREEMENT: &str = "Får utföras av en annan kommun endast enligt avtal om avtalssamverkan (kommunallagen 9 kap. 37 §). Ansvaret ligger kvar hos hemkommunen.";
const HOME_ONLY: &str = "Myndighetsutövning som endast hemkommunen får utföra. Sekretess enligt OSL 26 kap. gäller mellan kommuner.";

/// The services: (code, slot minutes, buffer minutes, anonymous chat, rules
/// for information, pre-assessment, meeting, investigation, decision,
/// follow-up).
#[allow(clippy::type_complexity)]
const SERVICES: [(&str, i64, i64, bool, [Rule; 6]); 5] = {
    use Rule::{Agreement as A, HomeOnly as H, Open as O};
    [
        ("ekonomiskt-bistand", 45, 15, false, [O, A, A, H, H, A]),
        ("stod-till-anhoriga", 60, 0, true, [O, O, O, A, H, O]),
        ("missbruk-beroende", 45, 15, true, [O, O, A, H, H, A]),
        ("vald-i-nara-relationer", 60, 15, true, [O, O, A, H, H, A]),
        ("barn-och-familj", 45, 15, false, [O, A, H, H, H, H]),
    ]
};

/// The services whose mail must not name the social services: someone
/// seeking help against violence or with substance abuse may share a phone
/// or a calendar with the very person the help is about.
const DISCREET: [&str; 2] = ["vald-i-nara-relationer", "missbruk-beroende"];

/// The services whose pre-assessment starts in a meeting rather than a
/// chat. The migration that brought chat sets the same.
const NO_CHAT: [&str; 1] = ["barn-och-familj"];

/// Whether the database already holds data; the demo is seeded only once.
pub async fn is_empty(db: &Db) -> Result<bool, Error> {
    Ok(catalog::municipalities(db).await?.is_empty())
}

/// Seeds the demo, with availability from `today` for two weeks.
pub async fn demo(db: &Db, today: Date, now: i64) -> Result<Vec<DemoSignIn>, Error> {
    for (code, name) in MUNICIPALITIES {
        catalog::insert_municipality(
            db,
            &Municipality {
                code: MunicipalityCode::parse(code)?,
                name: name.to_owned(),
                time_zone: bookings::DISPLAY_ZONE.to_owned(),
            },
        )
        .await?;
    }
    for (code, slot, buffer, anonymous, rules) in SERVICES {
        let steps: Vec<(Step, Rule, &str)> = Step::ALL
            .iter()
            .zip(rules)
            .map(|(step, rule)| {
                let basis = match rule {
                    Rule::Open => OPEN,
                    Rule::Agreement => AGREEMENT,
                    Rule::HomeOnly => HOME_ONLY,
                };
                (*step, rule, basis)
            })
            .collect();
        let service = Service {
            code: ServiceCode::parse(code)?,
            name_key: format!("service.{code}"),
            anonymous_chat: anonymous,
            slot_minutes: slot,
            buffer_minutes: buffer,
            discreet: DISCREET.contains(&code),
            chat: !NO_CHAT.contains(&code),
            bookable: true,
        };
        catalog::insert_service(db, &service, &steps).await?;
    }
    for agreement in agreements(today)? {
        catalog::insert_agreement(db, &agreement).await?;
    }

    let hash = accounts::hash_password(&NewPassword::parse(DEMO_PASSWORD)?).await?;
    let mut sign_ins = Vec::new();
    let until = today
        .checked_add(Span::new().days(13))
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    for (i, (code, name, role, services, languages)) in staff_plan().into_iter().enumerate() {
        let email = format!(
            "{}.{}@{DEMO_STAFF_DOMAIN}",
            role_word(role),
            ascii_slug(name)
        );
        let email = if i > 0 && sign_ins.iter().any(|s: &DemoSignIn| s.email == email) {
            format!(
                "{}{}.{}@{DEMO_STAFF_DOMAIN}",
                role_word(role),
                i,
                ascii_slug(name)
            )
        } else {
            email
        };
        let staff = accounts::create_staff(
            db,
            &NewStaff {
                municipality: MunicipalityCode::parse(code)?,
                email: EmailAddress::parse(&email)?,
                name: PersonName::parse(person_name(i))?,
                role,
                services: services
                    .iter()
                    .map(|s| ServiceCode::parse(s))
                    .collect::<Result<_, _>>()?,
                languages,
                password_hash: hash.clone(),
            },
            now,
        )
        .await?;
        if role == Role::Staff {
            // Mornings and afternoons on weekdays; Tuesday afternoons are kept
            // for investigations, as many social services do.
            for weekday in 1..=5i8 {
                for (start, end) in [(9 * 60, 12 * 60), (13 * 60, 16 * 60)] {
                    if weekday == 2 && start == 13 * 60 {
                        continue;
                    }
                    slots::add_template(
                        db,
                        &Template {
                            id: String::new(),
                            staff_id: staff.id.clone(),
                            weekday,
                            start_minute: start,
                            end_minute: end,
                            valid_from: today,
                            valid_to: until,
                        },
                    )
                    .await?;
                }
            }
        }
        sign_ins.push(DemoSignIn {
            who: format!("{} ({name}, {})", staff.name, role.as_str()),
            email,
            password: Some(DEMO_PASSWORD.to_owned()),
        });
    }
    for (email, name, home, language) in DEMO_RESIDENTS {
        accounts::create_resident(
            db,
            &EmailAddress::parse(email)?,
            &PersonName::parse(name)?,
            &MunicipalityCode::parse(home)?,
            language,
            now,
        )
        .await?;
        sign_ins.push(DemoSignIn {
            who: format!("{name} (resident, {})", municipality_name(home)),
            email: email.to_owned(),
            password: None,
        });
    }
    Ok(sign_ins)
}

fn agreements(today: Date) -> Result<Vec<Agreement>, Error> {
    let code = MunicipalityCode::parse;
    let service = |s: &str| ServiceCode::parse(s);
    let year = today.year();
    let scopes = |pairs: &[(&str, &[Step])]| -> Result<Vec<(ServiceCode, Step)>, Error> {
        let mut out = Vec::new();
        for (s, steps) in pairs {
            for step in *steps {
                out.push((service(s)?, *step));
            }
        }
        Ok(out)
    };
    use Step::{FollowUp, Meeting, PreAssessment};
    Ok(vec![
        Agreement {
            id: "avtal-lycksele-mala".into(),
            host: code("2481")?,
            home: code("2418")?,
            valid_from: date(year - 1, 1, 1),
            valid_to: date(year + 1, 12, 31),
            reference: "Avtal om avtalssamverkan inom socialtjänsten, Lycksele–Malå, dnr 2025/114"
                .into(),
            scopes: scopes(&[
                ("ekonomiskt-bistand", &[PreAssessment, Meeting, FollowUp]),
                ("missbruk-beroende", &[Meeting, FollowUp]),
                ("vald-i-nara-relationer", &[Meeting]),
            ])?,
        },
        Agreement {
            id: "avtal-storuman-sorsele".into(),
            host: code("2421")?,
            home: code("2422")?,
            valid_from: date(year - 1, 7, 1),
            valid_to: date(year + 2, 6, 30),
            reference: "Samverkansavtal Storuman–Sorsele, individ- och familjeomsorg".into(),
            scopes: scopes(&[
                ("ekonomiskt-bistand", &[PreAssessment, Meeting, FollowUp]),
                ("missbruk-beroende", &[Meeting, FollowUp]),
                ("vald-i-nara-relationer", &[Meeting, FollowUp]),
                ("barn-och-familj", &[PreAssessment]),
            ])?,
        },
        Agreement {
            id: "avtal-vilhelmina-dorotea".into(),
            host: code("2462")?,
            home: code("2425")?,
            valid_from: date(year, 1, 1),
            valid_to: date(year + 1, 12, 31),
            reference: "Avtal Vilhelmina–Dorotea om stöd i ekonomiskt bistånd".into(),
            scopes: scopes(&[("ekonomiskt-bistand", &[PreAssessment, Meeting])])?,
        },
        Agreement {
            id: "avtal-lycksele-norsjo-2024".into(),
            host: code("2481")?,
            home: code("2417")?,
            valid_from: date(year - 2, 1, 1),
            valid_to: date(year - 2, 12, 31),
            reference: "Avtal Lycksele–Norsjö (upphört)".into(),
            scopes: scopes(&[("ekonomiskt-bistand", &[Meeting])])?,
        },
    ])
}

type StaffPlan = (
    &'static str,
    &'static str,
    Role,
    Vec<&'static str>,
    Vec<Language>,
);

fn staff_plan() -> Vec<StaffPlan> {
    use Language::{Ar, En, Fi, Sv};
    let all = vec![
        "ekonomiskt-bistand",
        "stod-till-anhoriga",
        "missbruk-beroende",
        "vald-i-nara-relationer",
        "barn-och-familj",
    ];
    let mut plan: Vec<StaffPlan> = vec![
        (
            "2481",
            "Lycksele",
            Role::Staff,
            all.clone(),
            vec![Sv, En, Ar],
        ),
        ("2481", "Lycksele", Role::Staff, all.clone(), vec![Sv, Fi]),
        ("2481", "Lycksele", Role::Scheduler, vec![], vec![Sv, En]),
        ("2481", "Lycksele", Role::Admin, vec![], vec![Sv, En]),
        (
            "1283",
            "Helsingborg",
            Role::Staff,
            all.clone(),
            vec![Sv, En, Ar],
        ),
        (
            "1283",
            "Helsingborg",
            Role::Staff,
            vec!["stod-till-anhoriga", "missbruk-beroende"],
            vec![Sv],
        ),
        ("2421", "Storuman", Role::Staff, all.clone(), vec![Sv, Fi]),
        ("2462", "Vilhelmina", Role::Staff, all.clone(), vec![Sv, En]),
    ];
    for (code, name) in [
        ("2425", "Dorotea"),
        ("2418", "Malå"),
        ("2417", "Norsjö"),
        ("2422", "Sorsele"),
        ("2463", "Åsele"),
    ] {
        plan.push((code, name, Role::Staff, all.clone(), vec![Sv]));
    }
    plan
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Staff => "handlaggare",
        Role::Scheduler => "planerare",
        Role::Admin => "admin",
    }
}

fn person_name(i: usize) -> &'static str {
    const NAMES: [&str; 13] = [
        "Maria Berg",
        "Johan Nilsson",
        "Sara Lund",
        "Per Ek",
        "Fatima Ali",
        "Lars Åberg",
        "Eva Stenmark",
        "Karin Sjöberg",
        "Olof Lidström",
        "Ingrid Marklund",
        "Nils Grahn",
        "Elin Forsberg",
        "Mikael Öhman",
    ];
    NAMES[i % NAMES.len()]
}

fn municipality_name(code: &str) -> &'static str {
    MUNICIPALITIES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
        .unwrap_or("")
}

/// `Malå` becomes `mala`: email local parts stay ASCII.
fn ascii_slug(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'å' | 'ä' | 'Å' | 'Ä' => 'a',
            'ö' | 'Ö' => 'o',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The canned responses every database gets for the services it has, where
/// a service has none in a language: a greeting, one reply about the
/// service itself and a closing, in each of Kontakt's languages. Run at
/// every start; returns how many were stored.
pub async fn canned_responses(db: &Db) -> Result<usize, Error> {
    let existing: Vec<ServiceCode> = catalog::all_services(db)
        .await?
        .into_iter()
        .map(|s| s.code)
        .collect();
    let mut responses = Vec::new();
    for (service, topic) in CANNED_TOPICS {
        let code = ServiceCode::parse(service)?;
        if !existing.contains(&code) {
            continue;
        }
        for (i, language) in Language::ALL.into_iter().enumerate() {
            for (id, (title, text)) in [
                ("welcome", CANNED_WELCOME[i]),
                (topic.0, topic.1[i]),
                ("closing", CANNED_CLOSING[i]),
            ] {
                responses.push(CannedResponse {
                    service: code.clone(),
                    language,
                    id: id.to_owned(),
                    title: title.to_owned(),
                    text: text.to_owned(),
                });
            }
        }
    }
    crate::chats::add_canned_responses(db, &responses).await
}

/// A canned response's title and text in sv, en, fi and ar, the order of
/// [`Language::ALL`].
type Canned = [(&'static str, &'static str); 4];

const CANNED_WELCOME: Canned = [
    ("Hälsning", "Hej! Jag är socialsekreterare och har tagit emot din chatt. Berätta gärna med egna ord vad du behöver hjälp med."),
    ("Greeting", "Hello! I am a social worker and have picked up your chat. Please tell me in your own words what you need help with."),
    ("Tervehdys", "Hei! Olen sosiaalityöntekijä ja otin chattisi vastaan. Kerro omin sanoin, missä tarvitset apua."),
    ("تحية", "مرحبًا! أنا الأخصائي الاجتماعي وقد استلمت الدردشة. يُرجى أن تخبرنا بكلماتك ما الذي تحتاج المساعدة فيه."),
];

const CANNED_CLOSING: Canned = [
    ("Avslut", "Tack för att du hörde av dig. Om du vill kan vi boka ett möte, eller så hör du av dig i chatten igen när du vill."),
    ("Closing", "Thank you for getting in touch. If you like, we can book a meeting, or you can chat with us again whenever you want."),
    ("Lopetus", "Kiitos yhteydenotostasi. Voimme halutessasi varata tapaamisen, tai voit ottaa yhteyttä chatissa uudelleen milloin tahansa."),
    ("الختام", "شكرًا على التواصل. يمكننا حجز اجتماع إذا رغبت، أو يمكنك التواصل معنا عبر الدردشة مرة أخرى متى شئت."),
];

/// Each service's own reply: its id, and its title and text per language.
const CANNED_TOPICS: [(&str, (&str, Canned)); 6] = [
    ("ekonomiskt-bistand", ("household", [
        ("Hushållet", "För att bedöma din rätt till ekonomiskt bistånd behöver vi veta hur många ni är i hushållet och vilka inkomster och utgifter ni har. Du behöver inte skicka några papper i chatten."),
        ("Household", "To assess your right to financial assistance we need to know how many people live in your household and what your income and costs are. You do not need to send any documents in the chat."),
        ("Kotitalous", "Arvioidaksemme oikeutesi toimeentulotukeen meidän on tiedettävä, kuinka monta henkeä taloudessasi on ja mitkä ovat tulosi ja menosi. Sinun ei tarvitse lähettää asiakirjoja chatissa."),
        ("الأسرة", "لتقييم حقك في المساعدة المالية نحتاج إلى معرفة عدد أفراد الأسرة والدخل والمصاريف. لا حاجة إلى إرسال أي مستندات في الدردشة."),
    ])),
    ("stod-till-anhoriga", ("support", [
        ("Stöd till anhöriga", "Som anhörig kan du få samtalsstöd, träffa andra i samma situation eller få avlösning. Vad skulle hjälpa dig mest just nu?"),
        ("Support for relatives", "Relatives of someone who needs care can get someone to talk to, meet others in the same situation or get respite. What would help you most right now?"),
        ("Tukea omaisille", "Omaisena voit saada keskusteluapua, tavata muita samassa tilanteessa olevia tai saada vapaata hoivasta. Mikä auttaisi sinua eniten juuri nyt?"),
        ("دعم الأقارب", "يمكن للأقارب الحصول على دعم بالحديث، أو لقاء آخرين في الوضع نفسه، أو الحصول على استراحة. ما الذي يساعدك أكثر الآن؟"),
    ])),
    ("missbruk-beroende", ("no-pressure", [
        ("Inga krav", "Du behöver inte ha bestämt dig för något för att prata med oss. Vi kan berätta vilket stöd som finns, och du kan vara anonym i chatten."),
        ("No pressure", "You do not need to have decided anything to talk to us. We can tell you what support there is, and you can stay anonymous in the chat."),
        ("Ei vaatimuksia", "Sinun ei tarvitse olla päättänyt mitään puhuaksesi kanssamme. Voimme kertoa, mitä tukea on tarjolla, ja voit pysyä chatissa nimettömänä."),
        ("بلا ضغط", "لا يلزم أن تكون قد اتخذت أي قرار للتحدث معنا. يمكننا أن نخبرك بأنواع الدعم المتاحة، ويمكنك أن تبقى مجهول الهوية في الدردشة."),
    ])),
    ("vald-i-nara-relationer", ("safety", [
        ("Säkerhet", "Är du i säkerhet just nu? Om du är i akut fara, ring 112. Du kan stänga chatten när du vill, och vi kan prata om hur du kontaktar oss på ett säkert sätt."),
        ("Safety", "Are you safe right now? If you are in immediate danger, call 112. You can close the chat whenever you want, and we can talk about how to contact us safely."),
        ("Turvallisuus", "Oletko nyt turvassa? Jos olet välittömässä vaarassa, soita 112. Voit sulkea chatin milloin tahansa, ja voimme keskustella siitä, miten otat meihin yhteyttä turvallisesti."),
        ("الأمان", "هل أنت في أمان الآن؟ إذا كنت في خطر داهم، اتصل بالرقم 112. يمكنك إغلاق الدردشة متى شئت، ويمكننا التحدث عن طريقة آمنة للتواصل معنا."),
    ])),
    ("barn-och-familj", ("family", [
        ("Familjestöd", "Vi kan erbjuda samtal för föräldrar och barn, föräldrastöd i grupp och stöd i vardagen. Vill du berätta lite om er familj?"),
        ("Family support", "We can offer conversations for parents and children, parenting support in groups and support in everyday life. Would you like to tell me a little about your family?"),
        ("Perheen tuki", "Voimme tarjota keskusteluja vanhemmille ja lapsille, vanhemmuuden tukea ryhmässä ja tukea arkeen. Haluatko kertoa hieman perheestänne?"),
        ("دعم الأسرة", "يمكننا تقديم محادثات للوالدين والأطفال، ودعم الوالدين في مجموعات، ودعم في الحياة اليومية. هل تود أن تخبرنا قليلًا عن عائلتك؟"),
    ])),
    (catalog::GENERAL, ("right-help", [
        ("Rätt hjälp", "Berätta kort vad det gäller, så ser vi till att du får rätt hjälp. Du kan också boka ett möte med en socialsekreterare."),
        ("The right help", "Tell me briefly what it is about, and we will make sure you get the right help. You can also book a meeting with a social worker."),
        ("Oikea apu", "Kerro lyhyesti, mistä on kyse, niin varmistamme, että saat oikeanlaista apua. Voit myös varata tapaamisen sosiaalityöntekijän kanssa."),
        ("المساعدة المناسبة", "أخبرنا باختصار بما يتعلق الأمر، وسنتأكد من حصولك على المساعدة المناسبة. يمكنك أيضًا حجز اجتماع مع الأخصائي الاجتماعي."),
    ])),
];
