//! The legal map: for each service and step, whether another municipality
//! may perform it and on what legal basis, and the agreements in force.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use booking::catalog;

use maud::html;

use super::{data_table, long_date, page, service_name, today, tr, Ctx, PageResult};
use crate::clock::now;
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
    let mut services: Vec<booking::ServiceCode> = Vec::new();
    for r in &rules {
        if !services.contains(&r.service) {
            services.push(r.service.clone());
        }
    }
    let today = today(now());
    let in_force: Vec<_> = catalog::agreements(&state.db, None)
        .await?
        .into_iter()
        .filter(|a| a.valid_from <= today && today <= a.valid_to)
        .collect();
    let body = html! {
        h1 id="page-title" { (tr("page.legal.title")) }
        p { (tr("page.legal.intro")) }
        ul class="legend" {
            li { span class="rule rule-open" { (tr("page.legal.rule.open")) } " " (tr("page.legal.rule.open_text")) }
            li { span class="rule rule-agreement" { (tr("page.legal.rule.agreement")) } " " (tr("page.legal.rule.agreement_text")) }
            li { span class="rule rule-home_only" { (tr("page.legal.rule.home_only")) } " " (tr("page.legal.rule.home_only_text")) }
        }
        h2 { (tr("page.legal.services")) }
        @for (i, service) in services.iter().enumerate() {
            (data_table(
                None,
                &format!("rules-{i}"),
                html! { (service_name(service)) },
                &["page.legal.step", "page.legal.rule_heading", "page.legal.basis"],
                html! {
                    // Steps in the order a case moves through them, not
                    // alphabetically.
                    @for step in booking::Step::ALL {
                        @if let Some(r) = rules.iter().find(|r| &r.service == service && r.step == *step) {
                            tr {
                                th scope="row" { (tr(&format!("page.step.{}", step.as_str()))) }
                                td { span class={ "rule rule-" (r.rule.as_str()) } { (tr(&format!("page.legal.rule.{}", r.rule.as_str()))) } }
                                td lang="sv" dir="ltr" { (r.legal_basis) }
                            }
                        }
                    }
                },
            ))
        }
        h2 { (tr("page.legal.agreements")) }
        p { (tr("page.legal.agreements_intro")) }
        @if in_force.is_empty() {
            p { (tr("page.legal.no_agreements")) }
        }
        @for a in &in_force {
            @let host = name(&a.host);
            @let home = name(&a.home);
            section class="agreement" aria-labelledby={ "a-" (a.id) } {
                h3 id={ "a-" (a.id) } { (host) " → " (home) }
                dl class="facts" {
                    dt { (tr("page.legal.host")) }
                    dd { (host) }
                    dt { (tr("page.legal.home")) }
                    dd { (home) }
                    dt { (tr("page.legal.valid")) }
                    dd { (long_date(a.valid_from)) " – " (long_date(a.valid_to)) }
                    dt { (tr("page.legal.agreement_id")) }
                    dd { code { (a.id) } }
                    dt { (tr("page.legal.reference")) }
                    dd lang="sv" dir="ltr" { (a.reference) }
                }
                p { (tr("page.legal.covers")) }
                ul {
                    @for (service, step) in &a.scopes {
                        li { (service_name(service)) ": " (tr(&format!("page.step.{}", step.as_str()))) }
                    }
                }
            }
        }
    };
    Ok(page(&ctx, &tr("page.legal.title"), body).into_response())
}
