//! The legal map: for each service and step, whether another municipality
//! may perform it and on what legal basis, and the agreements in force.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use booking::catalog;

use super::{esc, long_date, page, service_name, t, today, tr, Ctx, PageResult};
use crate::api::now;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/legal-map", get(legal_map))
}

/// The public legal map.
#[tracing::instrument(skip_all)]
async fn legal_map(State(state): State<AppState>, ctx: Ctx) -> PageResult {
    let rules = catalog::policy(&state.db).await?;
    let names: HashMap<String, String> = catalog::municipalities(&state.db)
        .await?
        .into_iter()
        .map(|m| (m.code.to_string(), m.name))
        .collect();
    let name = |code: &booking::MunicipalityCode| {
        names
            .get(code.as_str())
            .cloned()
            .unwrap_or_else(|| code.to_string())
    };
    let mut body = format!(
        r#"<h1 id="page-title">{title}</h1>
<p>{intro}</p>
<ul class="legend">
<li><span class="rule rule-open">{open}</span> {open_text}</li>
<li><span class="rule rule-agreement">{agreement}</span> {agreement_text}</li>
<li><span class="rule rule-home_only">{home_only}</span> {home_only_text}</li>
</ul>
<h2>{services_title}</h2>"#,
        title = t("page.legal.title"),
        intro = t("page.legal.intro"),
        open = t("page.legal.rule.open"),
        open_text = t("page.legal.rule.open_text"),
        agreement = t("page.legal.rule.agreement"),
        agreement_text = t("page.legal.rule.agreement_text"),
        home_only = t("page.legal.rule.home_only"),
        home_only_text = t("page.legal.rule.home_only_text"),
        services_title = t("page.legal.services"),
    );
    let mut services: Vec<booking::ServiceCode> = Vec::new();
    for r in &rules {
        if !services.contains(&r.service) {
            services.push(r.service.clone());
        }
    }
    for (i, service) in services.iter().enumerate() {
        body.push_str(&format!(
            r#"<div class="table-wrap" role="region" tabindex="0" aria-labelledby="rules-{i}"><table>
<caption id="rules-{i}">{caption}</caption>
<thead><tr><th scope="col">{step}</th><th scope="col">{rule}</th><th scope="col">{basis}</th></tr></thead><tbody>"#,
            caption = service_name(service),
            step = t("page.legal.step"),
            rule = t("page.legal.rule_heading"),
            basis = t("page.legal.basis"),
        ));
        // Steps in the order a case moves through them, not alphabetically.
        for step in booking::Step::ALL {
            let Some(r) = rules
                .iter()
                .find(|r| &r.service == service && r.step == *step)
            else {
                continue;
            };
            body.push_str(&format!(
                "<tr><th scope=\"row\">{step}</th><td><span class=\"rule rule-{code}\">{rule}</span></td><td lang=\"sv\" dir=\"ltr\">{basis}</td></tr>",
                step = t(&format!("page.step.{}", step.as_str())),
                code = r.rule.as_str(),
                rule = t(&format!("page.legal.rule.{}", r.rule.as_str())),
                basis = esc(&r.legal_basis),
            ));
        }
        body.push_str("</tbody></table></div>");
    }

    let today = today(now());
    let in_force: Vec<_> = catalog::agreements(&state.db, None)
        .await?
        .into_iter()
        .filter(|a| a.valid_from <= today && today <= a.valid_to)
        .collect();
    body.push_str(&format!(
        "<h2>{}</h2><p>{}</p>",
        t("page.legal.agreements"),
        t("page.legal.agreements_intro")
    ));
    if in_force.is_empty() {
        body.push_str(&format!("<p>{}</p>", t("page.legal.no_agreements")));
    }
    for a in &in_force {
        let scopes: String = a
            .scopes
            .iter()
            .map(|(service, step)| {
                format!(
                    "<li>{}: {}</li>",
                    service_name(service),
                    t(&format!("page.step.{}", step.as_str()))
                )
            })
            .collect();
        body.push_str(&format!(
            r#"<section class="agreement" aria-labelledby="a-{id}">
<h3 id="a-{id}">{host} → {home}</h3>
<dl class="facts">
<dt>{host_label}</dt><dd>{host}</dd>
<dt>{home_label}</dt><dd>{home}</dd>
<dt>{valid_label}</dt><dd>{from} – {to}</dd>
<dt>{id_label}</dt><dd><code>{id}</code></dd>
<dt>{reference_label}</dt><dd lang="sv" dir="ltr">{reference}</dd>
</dl>
<p>{covers}</p>
<ul>{scopes}</ul>
</section>"#,
            id = esc(&a.id),
            host = esc(&name(&a.host)),
            home = esc(&name(&a.home)),
            host_label = t("page.legal.host"),
            home_label = t("page.legal.home"),
            valid_label = t("page.legal.valid"),
            from = long_date(a.valid_from),
            to = long_date(a.valid_to),
            id_label = t("page.legal.agreement_id"),
            reference_label = t("page.legal.reference"),
            reference = esc(&a.reference),
            covers = t("page.legal.covers"),
        ));
    }
    Ok(page(&ctx, &tr("page.legal.title"), &body).into_response())
}
