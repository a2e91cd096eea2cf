//! The page frame and the pieces every page shares: the layout, the error summary and the error page.
//! Templates are `maud`: every `(value)` is HTML-escaped at compile-time-checked sites; nothing here
//! builds HTML by string concatenation, and no element carries a `style` attribute or inline script.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::{CSRF_FIELD, STYLESHEET_PATH};
use crate::api::Problem;

/// Who the page is for: the navigation differs before and after log-in.
pub enum Nav<'a> {
    Visitor,
    /// Signed in; the CSRF token for the log-out form.
    Customer {
        csrf: &'a str,
    },
    /// Password accepted, second factor still to prove: only log-out.
    Pending {
        csrf: &'a str,
    },
    /// The operator console: none of the customer links (its own navigation is in the page), the brand
    /// leads to the console.
    Operator,
}

/// The frame of every page: language, viewport, the one stylesheet, a skip link for keyboard users, the
/// navigation and the main landmark.
pub fn layout(title: &str, nav: Nav<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — kinko" }
                link rel="stylesheet" href=(STYLESHEET_PATH);
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="site" {
                    @if matches!(nav, Nav::Operator) {
                        a class="brand" href="/ops" { "kinko operator console" }
                    } @else {
                        a class="brand" href="/" { "kinko" }
                        nav aria-label="Main" {
                            @match nav {
                                Nav::Visitor => {
                                    a href="/login" { "Log in" }
                                    a href="/signup" { "Sign up" }
                                }
                                Nav::Customer { csrf } => {
                                    a href="/portal" { "Balances" }
                                    a href="/portal/deposit" { "Deposit" }
                                    // web::money (H8).
                                    a href="/portal/withdraw" { "Withdraw" }
                                    a href="/portal/history" { "History" }
                                    a href="/portal/address-book" { "Address book" }
                                    a href="/portal/logins" { "Logins" }
                                    // web::kyc (H-C).
                                    a href="/portal/kyc" { "Identity" }
                                    // web::mfa (H7).
                                    a href="/portal/security" { "Security" }
                                    (logout_form(csrf))
                                }
                                Nav::Pending { csrf } => {
                                    (logout_form(csrf))
                                }
                                Nav::Operator => {}
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    (body)
                }
            }
        }
    }
}

fn logout_form(csrf: &str) -> Markup {
    html! {
        form method="post" action="/logout" class="inline" {
            input type="hidden" name=(CSRF_FIELD) value=(csrf);
            button type="submit" { "Log out" }
        }
    }
}

/// The problem an operation answered, as the customer reads it: its title, its detail, each field at
/// fault, and its type for support. `role="alert"` so that screen readers announce it.
pub fn problem_summary(problem: &Problem) -> Markup {
    html! {
        div class="problem" role="alert" id="problem" {
            h2 { (capitalise(&problem.body.title)) }
            @if let Some(detail) = &problem.body.detail {
                p { (detail) }
            }
            @if !problem.body.errors.is_empty() {
                ul {
                    @for e in &problem.body.errors {
                        li { strong { (e.field) } " " (e.reason) }
                    }
                }
            }
            p class="problem-type" { "Problem: " code { (problem.body.kind) } " (HTTP " (problem.status.as_u16()) ")" }
        }
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A full page for a problem, with the problem's status: never a blank page.
pub fn problem_page(problem: &Problem, back: Option<(&str, &str)>) -> Response {
    let (href, label) = back.unwrap_or(("/", "Back to the start page"));
    let body = html! {
        h1 { "That did not work" }
        (problem_summary(problem))
        p { a href=(href) { (label) } }
    };
    respond(problem.status, layout(&capitalise(&problem.body.title), Nav::Visitor, body), &[])
}

/// The page every portal address answers during a maintenance window (S4), or when the windows cannot be
/// read (`None`: kinko fails closed and says it cannot tell), with `Retry-After` and the console's security
/// headers: the notice the operators wrote, and when the window ends.
pub async fn maintenance_page(window: Option<(&str, i64)>, retry_after_secs: u64) -> Response {
    let body = html! {
        h1 { "Maintenance in progress" }
        div class="problem" role="alert" id="maintenance" {
            @match window {
                Some((message, ends_at_ms)) => {
                    p id="maintenance-message" { (message) }
                    p { "Expected to end at " strong id="maintenance-ends" { (utc(ends_at_ms)) } "." }
                }
                None => {
                    p id="maintenance-message" { "The service cannot tell whether maintenance is in progress; try again shortly." }
                }
            }
            p { "Your balances and the requests you made are kept; nothing is lost while the service is paused." }
            p class="problem-type" {
                "Problem: "
                code { (if window.is_some() { "urn:kinko:problem:maintenance" } else { "urn:kinko:problem:status-unavailable" }) }
                " (HTTP 503)"
            }
        }
        p { a href="/v1/status" { "Service status" } }
    };
    let mut resp = respond(StatusCode::SERVICE_UNAVAILABLE, layout("Maintenance", Nav::Visitor, body), &[]);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    super::security_headers(resp).await
}

/// An HTML response with the given status and extra `Set-Cookie` headers.
pub fn respond(status: StatusCode, markup: Markup, cookies: &[HeaderValue]) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    for c in cookies {
        h.append(header::SET_COOKIE, c.clone());
    }
    resp
}

/// The hidden synchronizer-token field every form carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(token); }
}

/// The second-factor code fields (authenticator app code or recovery code) the log-in and step-up forms share.
pub fn code_fields() -> Markup {
    html! {
        div class="field" {
            label for="method" { "Kind of code" }
            select id="method" name="method" {
                option value="totp" selected { "Authenticator app code" }
                option value="recovery_code" { "Recovery code" }
            }
        }
        div class="field" {
            label for="code" { "Code" }
            input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code"
                spellcheck="false" required maxlength="64";
        }
    }
}

/// Milliseconds since the epoch as UTC text (`2026-11-23 18:34:12 UTC`).
pub fn utc(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(t) => format!(
            "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms since epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// M1: values are escaped, so a hostile detail cannot become markup.
    #[test]
    fn m1_problem_text_is_escaped() {
        let p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "invalid request fields")
            .detail("<script>alert(1)</script>");
        let html = problem_summary(&p).into_string();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("Invalid request fields"), "{html}");
    }

    #[test]
    fn utc_text() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    }
}
