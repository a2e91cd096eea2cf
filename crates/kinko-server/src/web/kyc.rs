//! The customer's identity verification (KYC, U1) in the web console: the state of the check and, while
//! nothing is submitted or after a rejection, the form that submits the document references.
//!
//! As everywhere in the console, the page reads the JSON API's own handler ([`onboarding::kyc_status`],
//! `GET /v1/kyc`) and the form, after its CSRF check, calls the API's own [`onboarding::submit_kyc`]
//! (`POST /v1/kyc`): every rule stays there — a verified e-mail address first, 1 to 10 documents, each kind
//! and reference well-formed, no entry twice, only from `not_submitted` or `rejected`. A refusal is the
//! API's problem, shown above the form again (the values typed kept) with the API's status; a field at fault
//! (`documents[0].reference`) is also marked on its row.
//!
//! Documents are references into the custodian's own document system, never files: kinko stores no
//! document. The operators review and decide the case on their side (`/v1/ops/kyc`); the decision's reason
//! is never shown to the customer (the API does not return it).

use axum::Form;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::WebSession;
use super::pages::{Nav, csrf_field, layout, problem_page, problem_summary, respond, utc};
use super::portal::form;
use crate::AppState;
use crate::api::Problem;
use crate::api::onboarding::{self, KycStatusView};
use crate::api::ops_auth::OpsJson;

/// The identity verification page.
pub const KYC_PATH: &str = "/portal/kyc";
/// The document kinds offered: values the API's validation accepts (`[a-z0-9_]`, 1 to 32 characters), the
/// ones kinko's documentation names, with the text the customer reads.
pub const DOCUMENT_KINDS: &[(&str, &str)] = &[
    ("passport", "Passport"),
    ("national_id", "National identity card"),
    ("residence_card", "Residence card"),
    ("drivers_license", "Driving licence"),
    ("proof_of_address", "Proof of address"),
];
/// Rows of the form: the first is required, the others optional (the API takes up to 10).
const ROWS: usize = 3;

/// The form as posted: one kind and one reference per row (rows 2 and 3 optional).
#[derive(Deserialize, Default)]
pub struct KycForm {
    csrf: String,
    #[serde(default)]
    kind_1: String,
    #[serde(default)]
    reference_1: String,
    #[serde(default)]
    kind_2: String,
    #[serde(default)]
    reference_2: String,
    #[serde(default)]
    kind_3: String,
    #[serde(default)]
    reference_3: String,
}

impl KycForm {
    fn rows(&self) -> [(&str, &str); ROWS] {
        [(&self.kind_1, &self.reference_1), (&self.kind_2, &self.reference_2), (&self.kind_3, &self.reference_3)]
    }

    /// The API's request body: the first row always, and every later row up to the last one with a
    /// reference typed (so an empty row between two filled ones is sent, and refused by the API by name).
    fn body(&self) -> Value {
        let rows = self.rows();
        let last = rows.iter().rposition(|(_, reference)| !reference.is_empty()).unwrap_or(0);
        let documents: Vec<Value> =
            rows[..=last].iter().map(|(kind, reference)| json!({"kind": kind, "reference": reference})).collect();
        json!({ "documents": documents })
    }
}

/// Whether the state allows a (new) submission: first, and after a rejection.
fn may_submit(state: &str) -> bool {
    matches!(state, "not_submitted" | "rejected")
}

/// What the state means for the customer.
fn explanation(state: &str) -> &'static str {
    match state {
        "not_submitted" => {
            "Withdrawals and internal transfers need a verified identity; deposits are open already. Submit \
             references to your identity documents below."
        }
        "submitted" => "Your documents are waiting for an operator. You will be told by e-mail when it is decided.",
        "under_review" => "An operator is checking your documents. You will be told by e-mail when it is decided.",
        "verified" => "Your identity is verified: withdrawals and internal transfers are open to you.",
        "rejected" => {
            "Your documents were not accepted. Submit them again (or other ones) below; contact support for \
             the reason."
        }
        _ => "",
    }
}

/// The error the problem names for `field` (`documents[0].reference`), if any.
fn field_error<'a>(problem: Option<&'a Problem>, field: &str) -> Option<&'a str> {
    problem?.body.errors.iter().find(|e| e.field == field).map(|e| e.reason.as_str())
}

fn document_row(index: usize, kind: &str, reference: &str, problem: Option<&Problem>) -> Markup {
    let n = index + 1;
    let kind_id = format!("kyc-kind-{n}");
    let reference_id = format!("kyc-reference-{n}");
    let kind_error = field_error(problem, &format!("documents[{index}].kind"));
    let reference_error = field_error(problem, &format!("documents[{index}].reference"));
    let kind_error_id = format!("{kind_id}-error");
    let reference_error_id = format!("{reference_id}-error");
    let hint_id = format!("{reference_id}-hint");
    let described = match reference_error {
        Some(_) => format!("{hint_id} {reference_error_id}"),
        None => hint_id.clone(),
    };
    html! {
        fieldset class="document" {
            legend { "Document " (n) @if index > 0 { " (optional)" } }
            div class="field" {
                label for=(kind_id) { "Kind of document " (n) }
                select id=(kind_id) name=(format!("kind_{n}"))
                    aria-invalid=[kind_error.map(|_| "true")]
                    aria-describedby=[kind_error.map(|_| kind_error_id.as_str())] {
                    @for (value, text) in DOCUMENT_KINDS {
                        option value=(value) selected[*value == kind] { (text) }
                    }
                }
                @if let Some(reason) = kind_error {
                    p class="hint" id=(kind_error_id) { strong { "Document " (n) ", kind: " } (reason) }
                }
            }
            div class="field" {
                label for=(reference_id) { "Reference of document " (n) }
                input id=(reference_id) name=(format!("reference_{n}")) type="text" value=(reference)
                    maxlength=(kinko_core::onboarding::DOCUMENT_REFERENCE_LEN_MAX) autocomplete="off"
                    required[index == 0]
                    aria-invalid=[reference_error.map(|_| "true")] aria-describedby=(described);
                p class="hint" id=(hint_id) {
                    "The reference your document was filed under (for example " code { "dms://2026/000123" } ")."
                }
                @if let Some(reason) = reference_error {
                    p class="hint" id=(reference_error_id) { strong { "Document " (n) ", reference: " } (reason) }
                }
            }
        }
    }
}

/// The page: the state, the current submission, and the form while a submission is allowed. `notice`
/// follows a successful submission; `problem` a refusal (the form keeps `typed`).
async fn render(
    state: &AppState,
    session: &WebSession,
    status: StatusCode,
    problem: Option<&Problem>,
    typed: Option<&KycForm>,
    notice: Option<Markup>,
) -> Response {
    let kyc: KycStatusView = match onboarding::kyc_status(State(state.clone()), session.customer.clone()).await {
        Ok(Json(k)) => k,
        Err(p) => return problem_page(&p, Some(("/portal", "Back to your account"))),
    };
    let csrf = session.csrf();
    let blank = KycForm::default();
    let typed = typed.unwrap_or(&blank);
    let body = html! {
        h1 { "Identity verification" }
        @if let Some(p) = problem { (problem_summary(p)) }
        @if let Some(n) = notice { (n) }
        dl {
            dt { "E-mail address" }
            dd id="kyc-email" { @if kyc.email_verified { "verified" } @else { "not verified — " a href="/verify-email" { "enter the token" } } }
            dt { "Identity (KYC)" }
            dd id="kyc-state" data-state=(kyc.state) { (kyc.state.replace('_', " ")) }
        }
        p id="kyc-explanation" { (explanation(&kyc.state)) }
        @if let Some(s) = &kyc.submission {
            section aria-labelledby="submission-heading" {
                h2 id="submission-heading" { "Your latest submission" }
                dl {
                    dt { "State" }
                    dd id="submission-state" { (s.state.replace('_', " ")) }
                    dt { "Submitted" }
                    dd id="submission-submitted" { (utc(s.submitted_at_ms)) }
                    dt { "Decided" }
                    dd id="submission-decided" { @match s.decided_at_ms { Some(at) => (utc(at)), None => "not yet" } }
                }
                table id="kyc-documents" {
                    caption { "Documents submitted" }
                    thead { tr { th scope="col" { "Kind" } th scope="col" { "Reference" } } }
                    tbody {
                        @for d in &s.documents {
                            tr {
                                td class="kind" { (kind_text(&d.kind)) }
                                td class="reference" { code class="address" { (d.reference) } }
                            }
                        }
                    }
                }
            }
        }
        @if may_submit(&kyc.state) {
            @if !kyc.email_verified {
                p id="kyc-needs-email" { "Verify your e-mail address first: "
                    a href="/verify-email" { "enter the token we mailed you" } "." }
            }
            form method="post" action=(KYC_PATH) {
                (csrf_field(&csrf))
                h2 { @if kyc.state == "rejected" { "Submit your documents again" } @else { "Submit your documents" } }
                p class="hint" { "kinko keeps only the kind and the reference of each document, never the document itself." }
                @for (i, (kind, reference)) in typed.rows().into_iter().enumerate() {
                    (document_row(i, kind, reference, problem))
                }
                button type="submit" { "Submit for verification" }
            }
        }
        p { a href="/portal" { "Back to your account" } }
    };
    respond(status, layout("Identity verification", Nav::Customer { csrf: &csrf }, body), &[])
}

/// The text of a document kind: the offered name, or the kind itself.
fn kind_text(kind: &str) -> &str {
    DOCUMENT_KINDS.iter().find(|(value, _)| *value == kind).map_or(kind, |(_, text)| text)
}

/// `GET /portal/kyc`: the state, the latest submission, and the form while one is allowed.
pub async fn kyc_page(State(state): State<AppState>, session: WebSession) -> Response {
    render(&state, &session, StatusCode::OK, None, None, None).await
}

/// `POST /portal/kyc`: the API's [`onboarding::submit_kyc`] with the rows typed; `201` and the page with the
/// new submission, or the form again with the API's refusal.
pub async fn submit(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<KycForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return render(&state, &session, p.status, Some(&p), None, None).await,
    };
    match onboarding::submit_kyc(State(state.clone()), session.customer.clone(), OpsJson(f.body())).await {
        Ok((status, Json(s))) => {
            let notice = html! {
                p id="kyc-submitted" role="status" {
                    "Submitted: " (s.documents.len()) " document(s) are waiting for an operator."
                }
            };
            render(&state, &session, status, None, None, Some(notice)).await
        }
        Err(p) => render(&state, &session, p.status, Some(&p), Some(&f), None).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(rows: [(&str, &str); ROWS]) -> KycForm {
        KycForm {
            csrf: String::new(),
            kind_1: rows[0].0.into(),
            reference_1: rows[0].1.into(),
            kind_2: rows[1].0.into(),
            reference_2: rows[1].1.into(),
            kind_3: rows[2].0.into(),
            reference_3: rows[2].1.into(),
        }
    }

    /// U1: the first row is always sent (so an empty one is refused by the API, by name); later rows up to
    /// the last one typed, so the API's `documents[i]` is row i + 1.
    #[test]
    fn u1_kyc_form_rows_become_the_api_documents() {
        let one = typed([("passport", ""), ("passport", ""), ("passport", "")]).body();
        assert_eq!(one, json!({"documents": [{"kind": "passport", "reference": ""}]}));
        let gap = typed([("passport", "a"), ("national_id", ""), ("proof_of_address", "c")]).body();
        assert_eq!(gap["documents"].as_array().unwrap().len(), 3);
        assert_eq!(gap["documents"][2], json!({"kind": "proof_of_address", "reference": "c"}));
        let two = typed([("passport", "a"), ("proof_of_address", "b"), ("passport", "")]).body();
        assert_eq!(two["documents"].as_array().unwrap().len(), 2);
    }

    /// U1: every offered kind passes the API's validation.
    #[test]
    fn u1_offered_kinds_are_valid() {
        for (kind, _) in DOCUMENT_KINDS {
            let doc = kinko_core::onboarding::KycDocument { kind: kind.to_string(), reference: "r".into() };
            assert!(kinko_core::onboarding::validate_documents(&[doc]).is_ok(), "{kind}");
        }
    }
}
