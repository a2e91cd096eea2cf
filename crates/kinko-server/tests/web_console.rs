//! The web console's server side in process (issue #8), on SQLite and — when `KINKO_TEST_POSTGRES_URL` is
//! set — PostgreSQL: security headers, cookies, both CSRF lines, the web session being the API's session
//! (log-out ends it for the API too), the second-factor gate, and refusals shown as HTML pages that name
//! the problem. The same journey in Chromium is `crates/kinko/tests/web_portal.rs`.

mod support;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use kinko_store::testing::test_stores;
use serde_json::json;
use support::customer::{PASSWORD, app_with, enrol_totp, raw_call, register};
use tower::ServiceExt;

const HOST: &str = "kinko.test";
const ORIGIN: &str = "http://kinko.test";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Page {
    /// The value a `Set-Cookie` of this response gives `name`, with the whole header.
    fn set_cookie(&self, name: &str) -> Option<(String, String)> {
        self.headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
            let value = v.strip_prefix(&format!("{name}="))?.split(';').next()?.to_string();
            Some((value, v.to_string()))
        })
    }

    /// The hidden CSRF field of the page's first form that has one.
    fn csrf(&self) -> String {
        let start = self.text.find(r#"name="csrf" value=""#).expect("a CSRF field") + r#"name="csrf" value=""#.len();
        self.text[start..start + 64].to_string()
    }

    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One browser-like request: `Host`, the cookies, and for a form `Origin` (unless `origin` is `None`)
/// plus `Sec-Fetch-Site: same-origin` when the origin is ours.
async fn web(
    app: &Router,
    method: Method,
    path: &str,
    cookies: &[(&str, &str)],
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> Page {
    let mut b = Request::builder().method(method.clone()).uri(path).header(header::HOST, HOST);
    let cookie: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !cookie.is_empty() {
        b = b.header(header::COOKIE, cookie.join("; "));
    }
    if let Some(o) = origin {
        b = b.header(header::ORIGIN, o);
        if o == ORIGIN {
            b = b.header("sec-fetch-site", "same-origin");
        }
    }
    let req = if method == Method::POST {
        let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(Body::from(body.join("&"))).unwrap()
    } else {
        b.body(Body::empty()).unwrap()
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    Page { status, headers, text: String::from_utf8_lossy(&bytes).to_string() }
}

fn assert_security_headers(page: &Page, what: &str) {
    let h = |name: &str| page.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(h("content-security-policy"), CSP, "{what}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(h("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    assert_eq!(h("cache-control"), "no-store", "{what}");
}

/// Logs in through the form; returns the session token from the cookie and the log-in response.
async fn web_login(app: &Router, email: &str) -> (String, Page) {
    let form = web(app, Method::GET, "/login", &[], None, &[]).await;
    let (pre, _) = form.set_cookie("__Host-kinko-pre").expect("a pre-session cookie");
    let csrf = form.csrf();
    let r = web(
        app,
        Method::POST,
        "/login",
        &[("__Host-kinko-pre", &pre)],
        Some(ORIGIN),
        &[("csrf", &csrf), ("email", email), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "log in {email}: {}", r.text);
    let (token, cookie) = r.set_cookie("__Host-kinko-session").expect("a session cookie");
    for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    (token, r)
}

/// M1: every page carries the security headers; a POST from another site, without any origin header, or
/// with a token that is not the session's is refused with a page naming why, before anything happens.
#[tokio::test]
async fn m1_web_security_headers_and_csrf_refusals() {
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |_| {});
        for path in ["/login", "/signup", "/verify-email"] {
            let page = web(&app, Method::GET, path, &[], None, &[]).await;
            assert_eq!(page.status, StatusCode::OK, "{path}");
            assert!(page.content_type().starts_with("text/html"), "{path}");
            assert_security_headers(&page, path);
            assert!(!page.text.contains("<script") && !page.text.contains("style="), "{path}: inline script/style");
            let (_, cookie) = page.set_cookie("__Host-kinko-pre").expect("a pre-session cookie");
            assert!(cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=Strict"));
        }
        let css = web(&app, Method::GET, "/static/kinko.css", &[], None, &[]).await;
        assert_eq!((css.status, css.content_type()), (StatusCode::OK, "text/css; charset=utf-8"));

        register(&app, "web-csrf@example.com").await;
        let form = web(&app, Method::GET, "/login", &[], None, &[]).await;
        let (pre, _) = form.set_cookie("__Host-kinko-pre").unwrap();
        let csrf = form.csrf();
        let fields = [("csrf", csrf.as_str()), ("email", "web-csrf@example.com"), ("password", PASSWORD)];
        let cookies = [("__Host-kinko-pre", pre.as_str())];
        for (origin, why) in [
            (None, "cross-site request refused"),
            (Some("http://evil.example"), "cross-site request refused"),
            (Some("null"), "cross-site request refused"),
        ] {
            let r = web(&app, Method::POST, "/login", &cookies, origin, &fields).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{origin:?}");
            assert!(r.text.to_lowercase().contains(why), "{origin:?}: {}", r.text);
            assert!(r.set_cookie("__Host-kinko-session").is_none(), "{origin:?}: a session was created");
            assert_security_headers(&r, "refusal");
        }
        // The right origin, but a token from another pre-session (or none) is refused too.
        let other = web(&app, Method::GET, "/login", &[], None, &[]).await.csrf();
        for token in [other.as_str(), "", "00"] {
            let fields = [("csrf", token), ("email", "web-csrf@example.com"), ("password", PASSWORD)];
            let r = web(&app, Method::POST, "/login", &cookies, Some(ORIGIN), &fields).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "token {token:?}");
            assert!(r.text.contains("Form expired or not from this session"), "{}", r.text);
            assert!(r.set_cookie("__Host-kinko-session").is_none());
        }
        // Without the pre-session cookie the page's token matches nothing.
        let r = web(&app, Method::POST, "/login", &[], Some(ORIGIN), &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        // The genuine form logs in.
        web_login(&app, "web-csrf@example.com").await;
    }
}

/// M2, U10, U11: the web log-in is the API's log-in — the cookie holds an API session (the bearer token works),
/// the attempt is in the login history and the audit trail names the customer of a web POST; log-out
/// expires the session for the API as well.
#[tokio::test]
async fn m2_u10_u11_web_session_is_the_api_session() {
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |_| {});
        let (customer_id, _) = register(&app, "web-session@example.com").await;
        let (token, r) = web_login(&app, "web-session@example.com").await;
        assert_eq!(r.location(), "/portal");
        let balances = raw_call(&app, Method::GET, "/v1/balances", Some(&token), None, None).await;
        assert_eq!(balances.status, StatusCode::OK, "{}", balances.text);

        let portal = web(&app, Method::GET, "/portal", &[("__Host-kinko-session", &token)], None, &[]).await;
        assert_eq!(portal.status, StatusCode::OK, "{}", portal.text);
        assert_security_headers(&portal, "/portal");
        assert!(portal.text.contains("Balances") && portal.text.contains("Recent logins"), "{}", portal.text);
        let history = raw_call(&app, Method::GET, "/v1/login-history", Some(&token), None, None).await;
        assert_eq!(history.json["logins"][0]["outcome"], "success", "{}", history.text);

        // The deposit address page answers the API's address.
        let csrf = portal.csrf();
        let session = [("__Host-kinko-session", token.as_str())];
        let page =
            web(&app, Method::POST, "/portal/deposit", &session, Some(ORIGIN), &[("csrf", &csrf), ("asset", "ETH")])
                .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let api =
            raw_call(&app, Method::POST, "/v1/deposit-addresses", Some(&token), None, Some(json!({"asset": "ETH"})))
                .await;
        let address = api.json["address"].as_str().unwrap();
        assert!(page.text.contains(address), "{}", page.text);
        assert!(page.text.contains(r#"src="data:image/svg+xml;base64,"#), "no QR image");

        // The audit trail recorded the web POST as this customer's.
        let audited = ts.store.audit_rows(0, kinko_store::audit::AUDIT_PAGE_MAX).await.unwrap();
        assert!(
            audited.iter().any(|e| e.action == "POST /portal/deposit" && e.actor_id == customer_id),
            "no audit entry naming {customer_id} for the web deposit POST"
        );
        assert!(
            audited.iter().any(|e| e.action == "POST /login" && e.actor_id == "web-session@example.com"),
            "no audit entry naming the claimed e-mail for the web log-in"
        );

        let r = web(&app, Method::POST, "/logout", &session, Some(ORIGIN), &[("csrf", &csrf)]).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"));
        let (cleared, _) = r.set_cookie("__Host-kinko-session").expect("the cookie is cleared");
        assert_eq!(cleared, "");
        let after = raw_call(&app, Method::GET, "/v1/balances", Some(&token), None, None).await;
        assert_eq!(after.status, StatusCode::UNAUTHORIZED, "the API still takes a logged-out session");
        let portal = web(&app, Method::GET, "/portal", &session, None, &[]).await;
        assert_eq!((portal.status, portal.location()), (StatusCode::SEE_OTHER, "/login"));
    }
}

/// U4: with a second factor enrolled, the password alone opens no portal page; the factor proven through
/// the API's step-up does.
#[tokio::test]
async fn u4_web_second_factor_gates_the_portal() {
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |_| {});
        let (_, api_token) = register(&app, "web-totp@example.com").await;
        let (_, recovery_codes, _) = enrol_totp(&app, &api_token).await;
        let (token, r) = web_login(&app, "web-totp@example.com").await;
        assert_eq!(r.location(), "/login/second-factor");
        let session = [("__Host-kinko-session", token.as_str())];
        for path in ["/portal", "/portal/deposit"] {
            let page = web(&app, Method::GET, path, &session, None, &[]).await;
            assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, "/login/second-factor"), "{path}");
        }
        let form = web(&app, Method::GET, "/login/second-factor", &session, None, &[]).await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        let wrong = [("csrf", csrf.as_str()), ("method", "totp"), ("code", "000000")];
        let r = web(&app, Method::POST, "/login/second-factor", &session, Some(ORIGIN), &wrong).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("Second factor refused"), "{}", r.text);
        let right = [("csrf", csrf.as_str()), ("method", "recovery_code"), ("code", recovery_codes[0].as_str())];
        let r = web(&app, Method::POST, "/login/second-factor", &session, Some(ORIGIN), &right).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/portal"), "{}", r.text);
        let portal = web(&app, Method::GET, "/portal", &session, None, &[]).await;
        assert_eq!(portal.status, StatusCode::OK);
        assert!(portal.text.contains("authenticator app active"), "{}", portal.text);
    }
}

/// M1: a refusal is an HTML page naming the problem with the API's status (not rewritten to problem+json,
/// never blank); API routes keep answering problem+json.
#[tokio::test]
async fn m1_web_refusals_are_pages_that_name_the_problem() {
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |_| {});
        register(&app, "web-taken@example.com").await;
        let form = web(&app, Method::GET, "/signup", &[], None, &[]).await;
        let (pre, _) = form.set_cookie("__Host-kinko-pre").unwrap();
        let csrf = form.csrf();
        let cookies = [("__Host-kinko-pre", pre.as_str())];
        let taken = [("csrf", csrf.as_str()), ("email", "web-taken@example.com"), ("password", PASSWORD)];
        let r = web(&app, Method::POST, "/signup", &cookies, Some(ORIGIN), &taken).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(r.content_type().starts_with("text/html"), "{}", r.content_type());
        assert!(r.text.contains("E-mail already registered") && r.text.contains("urn:kinko:problem:email-taken"));
        assert!(r.text.contains(r#"role="alert""#));
        let short = [("csrf", csrf.as_str()), ("email", "web-new@example.com"), ("password", "short")];
        let r = web(&app, Method::POST, "/signup", &cookies, Some(ORIGIN), &short).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text.contains("must be 12 to 128 characters"), "{}", r.text);
        // A form with a field missing is named, not answered with axum's plain text.
        let r = web(&app, Method::POST, "/signup", &cookies, Some(ORIGIN), &[("csrf", &csrf)]).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text.contains("could not be read"), "{}", r.text);
        let api = raw_call(&app, Method::GET, "/v1/no-such-route", None, None, None).await;
        assert_eq!(api.headers.get(header::CONTENT_TYPE).unwrap(), "application/problem+json");
    }
}

/// U4, U8: the confirmation mail's link opens a form pre-filled with the token (opening it confirms
/// nothing); posting it confirms through the API's confirmation, once; a used token is refused on the page
/// with the API's answer.
#[tokio::test]
async fn u4_u8_withdrawal_confirmed_from_the_mail_link_page() {
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |_| {});
        let email = format!("web-confirm-{}@example.com", uuid::Uuid::now_v7().simple());
        let destination = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
        let c = support::customer::Customer::new(&app, &email).await;
        c.save_destination(&app, "ETH", destination).await;
        support::customer::fund(&ts.store, &c.id, &format!("d-{}", uuid::Uuid::now_v7().simple()), 10u128.pow(18))
            .await;
        let body = support::customer::with_transaction_password(
            json!({"asset": "ETH", "amount": "1000000000000000", "destination": destination}),
        );
        let r = raw_call(&app, Method::POST, "/v1/withdrawals", Some(&c.token), Some("web-u8"), Some(body)).await;
        assert_eq!(r.json["status"], "awaiting_confirmation", "{}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        let mails = support::customer::deliver_mail(&ts.store).await;
        let token = mails
            .iter()
            .filter(|m| m.body.contains(&id))
            .find_map(support::customer::token_of)
            .expect("a confirmation mail naming the withdrawal");

        let form = web(&app, Method::GET, &format!("/confirm-withdrawal?token={token}"), &[], None, &[]).await;
        assert_eq!(form.status, StatusCode::OK);
        assert_security_headers(&form, "/confirm-withdrawal");
        assert!(form.text.contains(&format!(r#"value="{token}""#)), "the form is pre-filled: {}", form.text);
        // U4: the page shows what the token confirms (amount with decimals, destination) before anything is
        // confirmed; a token naming nothing says so.
        assert!(form.text.contains("0.001 ETH"), "the amount: {}", form.text);
        assert!(form.text.contains(destination), "the destination: {}", form.text);
        assert!(form.text.contains(&id), "the withdrawal: {}", form.text);
        let view = raw_call(&app, Method::GET, &format!("/v1/withdrawals/{id}"), Some(&c.token), None, None).await;
        assert_eq!(view.json["status"], "awaiting_confirmation", "opening the link confirmed it");
        let other =
            web(&app, Method::GET, &format!("/confirm-withdrawal?token={}", "ab".repeat(32)), &[], None, &[]).await;
        assert_eq!(other.status, StatusCode::OK);
        assert!(other.text.contains("pending-unknown") && !other.text.contains(destination), "{}", other.text);

        let (pre, _) = form.set_cookie("__Host-kinko-pre").unwrap();
        let cookies = [("__Host-kinko-pre", pre.as_str())];
        let csrf = form.csrf();
        let fields = [("csrf", csrf.as_str()), ("token", token.as_str())];
        let r = web(&app, Method::POST, "/confirm-withdrawal", &cookies, Some(ORIGIN), &fields).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(r.text.contains("Withdrawal confirmed") && r.text.contains(&id), "{}", r.text);
        let view = raw_call(&app, Method::GET, &format!("/v1/withdrawals/{id}"), Some(&c.token), None, None).await;
        assert_eq!(view.json["status"], "approved", "{}", view.text);

        let again = web(&app, Method::POST, "/confirm-withdrawal", &cookies, Some(ORIGIN), &fields).await;
        assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", again.text);
        assert!(
            again.text.contains("Confirmation token not valid")
                && again.text.contains("is unknown, already used or expired"),
            "{}",
            again.text
        );
        assert!(again.text.contains(r#"role="alert""#), "{}", again.text);
        // Used: the link's page no longer shows the withdrawal.
        let used = web(&app, Method::GET, &format!("/confirm-withdrawal?token={token}"), &[], None, &[]).await;
        assert!(used.text.contains("pending-unknown") && !used.text.contains(destination), "{}", used.text);
    }
}

// ---------------------------------------------------------------------------------------------------
// web::money (H8): withdrawal, history, address book and wallet binding, login history.

/// The text between `start` (exclusive) and the next `end` in `text`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap_or_else(|| panic!("{start:?} not in {text}")) + start.len();
    let len = text[from..].find(end).unwrap_or_else(|| panic!("{end:?} after {start:?} not in {text}"));
    &text[from..from + len]
}

fn unescape(html: &str) -> String {
    html.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// U4, U9, U13, M1: the withdrawal form offers only usable saved destinations and goes through the API's
/// checks, each refusal a page naming it with the API's status: a wrong transaction password (403), a
/// destination not saved (422), more decimals than the asset has (422), no second factor (403); a right
/// one with a decimal amount is accepted in base units, waits for the mailed confirmation, and the history
/// shows it, explained, reloading every 5 s unless paused; cancelled from the history page.
#[tokio::test]
async fn u4_u9_u13_web_withdrawal_refusals_and_history() {
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |_| {});
        let email = format!("web-money-{}@example.com", uuid::Uuid::now_v7().simple());
        let saved = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
        let c = support::customer::Customer::new(&app, &email).await;
        c.save_destination(&app, "ETH", saved).await;
        support::customer::fund(&ts.store, &c.id, &format!("d-{}", uuid::Uuid::now_v7().simple()), 10u128.pow(18))
            .await;
        // The API's session token is the web session (the cookie carries the same token).
        let session = [("__Host-kinko-session", c.token.as_str())];
        let page = web(&app, Method::GET, "/portal/withdraw", &session, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_security_headers(&page, "/portal/withdraw");
        assert!(page.text.contains(&format!(r#"<option value="{saved}""#)), "{}", page.text);
        let csrf = page.csrf();
        let key = between(&page.text, r#"name="key" value=""#, "\"").to_string();
        let post = |fields: Vec<(&'static str, String)>| {
            let app = app.clone();
            let token = c.token.clone();
            async move {
                let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                web(&app, Method::POST, "/portal/withdraw", &[("__Host-kinko-session", &token)], Some(ORIGIN), &f).await
            }
        };
        let fields = |key: &str, amount: &str, destination: &str, password: &str| {
            vec![
                ("csrf", csrf.clone()),
                ("key", key.to_string()),
                ("asset", "ETH".to_string()),
                ("amount", amount.to_string()),
                ("destination", destination.to_string()),
                ("transaction_password", password.to_string()),
            ]
        };
        let r = post(fields("web-wrong-tp", "0.25", saved, "not the transaction password")).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("urn:kinko:problem:transaction-password-wrong"), "{}", r.text);
        assert!(r.text.contains("Wrong transaction password") && r.text.contains(r#"role="alert""#), "{}", r.text);
        let unsaved = "0x15d34aaf54267db7d7c367839aaf71a00a2c6a65";
        let r = post(fields("web-unsaved", "0.25", unsaved, support::customer::TRANSACTION_PASSWORD)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(r.text.contains("urn:kinko:problem:destination-not-saved"), "{}", r.text);
        assert!(r.text.contains("is not a saved destination for ETH"), "{}", r.text);
        let r =
            post(fields("web-decimals", "0.0000000000000000001", saved, support::customer::TRANSACTION_PASSWORD)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(r.text.contains("has more than 18 digits after the decimal point"), "{}", r.text);
        let r = post(fields("web-not-a-number", "1e18", saved, support::customer::TRANSACTION_PASSWORD)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(r.text.contains("must be a decimal integer"), "the API's own parser answers: {}", r.text);
        // Without the CSRF token nothing is tried.
        let mut no_csrf = fields("web-no-csrf", "0.25", saved, support::customer::TRANSACTION_PASSWORD);
        no_csrf[0].1 = "0".repeat(64);
        assert_eq!(post(no_csrf).await.status, StatusCode::FORBIDDEN);

        let r = post(fields(&key, "0.25", saved, support::customer::TRANSACTION_PASSWORD)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert!(r.text.contains("awaiting confirmation") && r.text.contains("We e-mailed you a confirmation link"));
        let id = between(&r.text, r#"<code id="withdrawal-id">"#, "<").to_string();
        let view = raw_call(&app, Method::GET, &format!("/v1/withdrawals/{id}"), Some(&c.token), None, None).await;
        assert_eq!(view.json["amount"], "250000000000000000", "{}", view.text);
        assert_eq!(view.json["status"], "awaiting_confirmation");
        // The same form again (a double submit) is the same withdrawal.
        let again = post(fields(&key, "0.25", saved, support::customer::TRANSACTION_PASSWORD)).await;
        assert_eq!(between(&again.text, r#"<code id="withdrawal-id">"#, "<"), id);

        let history = web(&app, Method::GET, "/portal/history", &session, None, &[]).await;
        assert_eq!(history.status, StatusCode::OK);
        assert_security_headers(&history, "/portal/history");
        assert_eq!(history.headers.get("refresh").and_then(|v| v.to_str().ok()), Some("5"));
        assert!(history.text.contains(&format!(r#"data-id="{id}""#)), "{}", history.text);
        assert!(history.text.contains("0.25 ETH") && history.text.contains("awaiting-explained"), "{}", history.text);
        // `fund` posts to the ledger without a chain deposit: no deposit row to show.
        assert!(history.text.contains("No deposits yet"), "{}", history.text);
        let paused = web(&app, Method::GET, "/portal/history?live=0", &session, None, &[]).await;
        assert!(paused.headers.get("refresh").is_none() && paused.text.contains("Live updates paused"));
        // Cancelled from the history (the API's cancel: hold released, token dead).
        let cancel = format!("/portal/withdrawals/{id}/cancel");
        assert!(history.text.contains(&format!(r#"action="{cancel}""#)), "{}", history.text);
        let r = web(&app, Method::POST, &cancel, &session, Some(ORIGIN), &[("csrf", csrf.as_str())]).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/portal/history"), "{}", r.text);
        let view = raw_call(&app, Method::GET, &format!("/v1/withdrawals/{id}"), Some(&c.token), None, None).await;
        assert_eq!(view.json["status"], "cancelled", "{}", view.text);
        let r =
            web(&app, Method::POST, "/portal/withdrawals/w_none/cancel", &session, Some(ORIGIN), &[("csrf", &csrf)])
                .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        assert!(r.text.contains(r#"role="alert""#), "{}", r.text);

        // No second factor: the API's refusal, named.
        let plain = format!("web-plain-{}@example.com", uuid::Uuid::now_v7().simple());
        let (_, plain_token) = register(&app, &plain).await;
        let plain_session = [("__Host-kinko-session", plain_token.as_str())];
        let page = web(&app, Method::GET, "/portal/withdraw", &plain_session, None, &[]).await;
        assert!(page.text.contains(r#"id="no-destinations""#), "{}", page.text);
        let plain_csrf = page.csrf();
        let f = [
            ("csrf", plain_csrf.as_str()),
            ("key", "web-plain"),
            ("asset", "ETH"),
            ("amount", "0.1"),
            ("destination", saved),
            ("transaction_password", "x"),
        ];
        let r = web(&app, Method::POST, "/portal/withdraw", &plain_session, Some(ORIGIN), &f).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("urn:kinko:problem:mfa-required"), "{}", r.text);
    }
}

/// U4, U10, U11, U13: the address book page adds an entry with its cooling-off shown (a session without a
/// fresh step-up is refused, naming the step-up), binds a wallet by a pasted EIP-191 signature over the
/// API's challenge (a signature by another key refused), removes an entry; the login history lists the
/// attempts.
#[tokio::test]
async fn u4_u11_u13_web_address_book_wallet_binding_and_logins() {
    use alloy_primitives::eip191_hash_message;
    use kinko_signer::{SecpKey, SoftwareKey};
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |c| c.address_book.cooling_off_ms = 3_600_000);
        let email = format!("web-book-{}@example.com", uuid::Uuid::now_v7().simple());
        let c = support::customer::Customer::new(&app, &email).await;
        let session = [("__Host-kinko-session", c.token.as_str())];
        let page = web(&app, Method::GET, "/portal/address-book", &session, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_security_headers(&page, "/portal/address-book");
        assert!(page.text.contains("60 minutes after you save it"), "{}", page.text);
        let csrf = page.csrf();
        let dest = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
        let add = [("csrf", csrf.as_str()), ("label", "my <cold> wallet"), ("asset", "ETH"), ("address", dest)];
        let r = web(&app, Method::POST, "/portal/address-book", &session, Some(ORIGIN), &add).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert!(r.text.contains("my &lt;cold&gt; wallet") && r.text.contains("cooling off until"), "{}", r.text);
        let r = web(&app, Method::POST, "/portal/address-book", &session, Some(ORIGIN), &add).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert!(r.text.contains("urn:kinko:problem:address-book-duplicate"), "{}", r.text);
        let w = web(&app, Method::GET, "/portal/withdraw", &session, None, &[]).await;
        assert!(w.text.contains("1 still cooling off"), "the cooling entry is not offered: {}", w.text);

        // A session with the password only (no fresh step-up) is refused, with the way to step up.
        let weak = support::customer::login(&app, &email).await;
        let weak_session = [("__Host-kinko-session", weak.as_str())];
        // The portal itself needs the factor proven on the session first.
        let gate = web(&app, Method::GET, "/portal/address-book", &weak_session, None, &[]).await;
        assert_eq!(gate.location(), "/login/second-factor");

        // Wallet binding: the challenge's text, signed by the wallet, pasted back.
        let key = SoftwareKey::from_secret(&[0x42; 32]).unwrap();
        let wallet = key.address();
        let ch = [("csrf", csrf.as_str()), ("address", wallet.as_str())];
        let r = web(&app, Method::POST, "/portal/wallet-binding/challenge", &session, Some(ORIGIN), &ch).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let message =
            unescape(between(&r.text, r#"<textarea id="challenge-message" readonly rows="9">"#, "</textarea>"));
        assert!(message.contains("It moves no funds"), "{message}");
        let challenge_id = between(&r.text, r#"name="challenge_id" value=""#, "\"").to_string();
        let sign = |k: &SoftwareKey| {
            let mut sig = k.sign_prehash(&eip191_hash_message(message.as_bytes()).0).unwrap();
            sig[64] += 27;
            format!("0x{}", hex::encode(sig))
        };
        let thief = SoftwareKey::from_secret(&[0x43; 32]).unwrap();
        let bad_sig = sign(&thief);
        let bind = |sig: &str| {
            vec![
                ("csrf", csrf.clone()),
                ("address", wallet.clone()),
                ("challenge_id", challenge_id.clone()),
                ("signature", sig.to_string()),
            ]
        };
        let f = bind(&bad_sig);
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = web(&app, Method::POST, "/portal/wallet-binding", &session, Some(ORIGIN), &f).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(r.text.contains("urn:kinko:problem:wallet-signature-invalid"), "{}", r.text);
        // That attempt used the challenge up: a new one for the right signature.
        let r = web(&app, Method::POST, "/portal/wallet-binding/challenge", &session, Some(ORIGIN), &ch).await;
        let message =
            unescape(between(&r.text, r#"<textarea id="challenge-message" readonly rows="9">"#, "</textarea>"));
        let challenge_id = between(&r.text, r#"name="challenge_id" value=""#, "\"").to_string();
        let mut sig = key.sign_prehash(&eip191_hash_message(message.as_bytes()).0).unwrap();
        sig[64] += 27;
        let good = format!("0x{}", hex::encode(sig));
        let f = [
            ("csrf", csrf.as_str()),
            ("address", wallet.as_str()),
            ("challenge_id", &challenge_id),
            ("signature", &good),
        ];
        let r = web(&app, Method::POST, "/portal/wallet-binding", &session, Some(ORIGIN), &f).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert!(r.text.contains(r#"id="bound""#) && r.text.contains(&wallet.to_ascii_lowercase()), "{}", r.text);
        let w = web(&app, Method::GET, "/portal/withdraw", &session, None, &[]).await;
        assert!(w.text.contains("your bound wallet"), "the bound wallet is a destination at once: {}", w.text);

        // Remove the entry.
        let entry_id = between(&page_entries(&app, &session).await, r#"<tr data-id=""#, "\"").to_string();
        let r = web(
            &app,
            Method::POST,
            &format!("/portal/address-book/{entry_id}/delete"),
            &session,
            Some(ORIGIN),
            &[("csrf", csrf.as_str())],
        )
        .await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/portal/address-book"), "{}", r.text);
        assert!(!page_entries(&app, &session).await.contains(&entry_id));

        let logins = web(&app, Method::GET, "/portal/logins", &session, None, &[]).await;
        assert_eq!(logins.status, StatusCode::OK);
        assert!(
            logins.text.contains(r#"id="last-login""#)
                && logins.text.matches("<td class=\"outcome\">success").count() >= 2
        );
    }
}

async fn page_entries(app: &Router, session: &[(&str, &str)]) -> String {
    web(app, Method::GET, "/portal/address-book", session, None, &[]).await.text
}

// ---------------------------------------------------------------------------------------------------
// web::mfa (H7): the security page, TOTP enrolment, the passkey ceremony page, the step-up page and the
// WebAuthn script. The same pages in Chromium, with a virtual authenticator: crates/kinko/tests/web_mfa.rs.

/// U2, U3, U4: the security page enrols TOTP through the API's handlers (password re-checked, the code
/// confirms, recovery codes shown once); the passkey ceremony page carries the API's options and loads the
/// one script, which kinko serves as JavaScript; a missing authenticator answer is named; a step-up only
/// ever returns to a portal page.
#[tokio::test]
async fn u2_u3_u4_web_security_pages_enrol_factors_through_the_api() {
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |_| {});
        let script = web(&app, Method::GET, "/static/webauthn.js", &[], None, &[]).await;
        assert_eq!(script.status, StatusCode::OK);
        assert!(script.content_type().starts_with("text/javascript"), "{}", script.content_type());
        assert!(script.text.contains("navigator.credentials.create"));
        assert_eq!(script.headers.get("x-content-type-options").unwrap(), "nosniff");

        register(&app, "web-mfa@example.com").await;
        let (token, _) = web_login(&app, "web-mfa@example.com").await;
        let session = [("__Host-kinko-session", token.as_str())];
        let page = web(&app, Method::GET, "/portal/security", &session, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_security_headers(&page, "/portal/security");
        assert!(page.text.contains("not set up") && !page.text.contains("<script"), "{}", page.text);
        let csrf = page.csrf();

        // The password is re-checked by the API's handler; a wrong one is named.
        let wrong = [("csrf", csrf.as_str()), ("password", "not the password at all")];
        let r = web(&app, Method::POST, "/portal/security/totp", &session, Some(ORIGIN), &wrong).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("Second factor refused") && r.text.contains(r#"role="alert""#), "{}", r.text);

        // The passkey ceremony page: the API's options in a data attribute, and the script by src only.
        let right = [("csrf", csrf.as_str()), ("password", PASSWORD)];
        let r = web(&app, Method::POST, "/portal/security/passkey", &session, Some(ORIGIN), &right).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(r.text.contains(r#"data-webauthn="create""#), "{}", r.text);
        assert!(r.text.contains("data-webauthn-options=\"{&quot;publicKey&quot;:"), "{}", r.text);
        assert!(r.text.contains(r#"<script src="/static/webauthn.js" defer></script>"#), "{}", r.text);
        let none = [("csrf", csrf.as_str()), ("credential", "")];
        let r = web(&app, Method::POST, "/portal/security/passkey/finish", &session, Some(ORIGIN), &none).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(r.text.contains("gave no passkey answer"), "{}", r.text);

        // TOTP: the QR code and the key, then a code computed from that key.
        let r = web(&app, Method::POST, "/portal/security/totp", &session, Some(ORIGIN), &right).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert!(r.text.contains(r#"id="totp-qr" src="data:image/svg+xml;base64,"#), "{}", r.text);
        let secret = between(&r.text, r#"id="totp-secret" class="address">"#, "<").to_string();
        let enrolment = between(&r.text, r#"name="enrolment_id" value=""#, "\"").to_string();
        // The key as an authenticator app would take it from the text (the QR code holds the same URI).
        let totp = totp_rs::Totp::from_url(format!("otpauth://totp/kinko:web-mfa?secret={secret}&issuer=kinko"))
            .expect("the page shows a base32 key");
        let code = totp.generate(support::customer::now_secs()).to_string();
        let form = [("csrf", csrf.as_str()), ("enrolment_id", enrolment.as_str()), ("code", code.as_str())];
        let r = web(&app, Method::POST, "/portal/security/totp/confirm", &session, Some(ORIGIN), &form).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let codes: Vec<String> =
            r.text.split("<li><code>").skip(1).map(|c| c.split('<').next().unwrap_or_default().to_string()).collect();
        assert_eq!(codes.len(), 10, "{}", r.text);
        // The session must now prove the factor before the portal opens.
        let r = web(&app, Method::GET, "/portal/security", &session, None, &[]).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login/second-factor"));

        // Log in again with a recovery code (no passkey offered: none registered).
        let (token, _) = web_login(&app, "web-mfa@example.com").await;
        let session = [("__Host-kinko-session", token.as_str())];
        let r = web(&app, Method::GET, "/login/second-factor", &session, None, &[]).await;
        assert!(!r.text.contains("passkey-choice"), "no passkey yet: {}", r.text);
        let csrf = r.csrf();
        let form = [("csrf", csrf.as_str()), ("method", "recovery_code"), ("code", codes[0].as_str())];
        let r = web(&app, Method::POST, "/login/second-factor", &session, Some(ORIGIN), &form).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/portal"), "{}", r.text);

        // A step-up returns only to portal pages.
        for (next, kept) in [
            ("/portal/withdraw", "/portal/withdraw"),
            ("%2F%2Fevil.example%2F", "/portal"),
            ("https%3A%2F%2Fevil.example%2Fportal", "/portal"),
            ("/login", "/portal"),
        ] {
            let r = web(&app, Method::GET, &format!("/portal/step-up?next={next}"), &session, None, &[]).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            assert!(r.text.contains(&format!(r#"name="next" value="{kept}""#)), "{next}: {}", r.text);
        }
        let form = [
            ("csrf", csrf.as_str()),
            ("method", "recovery_code"),
            ("code", codes[1].as_str()),
            ("next", "//evil.example"),
        ];
        let r = web(&app, Method::POST, "/portal/step-up", &session, Some(ORIGIN), &form).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/portal"), "{}", r.text);
        let form = [
            ("csrf", csrf.as_str()),
            ("method", "recovery_code"),
            ("code", codes[1].as_str()),
            ("next", "/portal/security"),
        ];
        let r = web(&app, Method::POST, "/portal/step-up", &session, Some(ORIGIN), &form).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "a used recovery code: {}", r.text);
        assert!(r.text.contains("Second factor refused"), "{}", r.text);
        let r = web(&app, Method::GET, "/portal/security", &session, None, &[]).await;
        assert!(r.text.contains("8 recovery codes left"), "{}", r.text);
    }
}

/// U2, U4, U9 (web::credentials): the transaction-password page and the removal of the authenticator app
/// call the API's own handlers. Without a second factor proven just before, both are refused with the
/// API's `step-up-required` named on an HTML page; a CSRF token that is not the session's and a POST
/// without an origin are refused before anything happens; a typo in the repeat field, a too-short
/// password and the login password are named; once stepped up the password is set (the API then reports
/// it) and the app is removed (the API then lists no TOTP factor, and a second removal names the 404).
#[tokio::test]
async fn u2_u4_u9_web_transaction_password_and_totp_removal_go_through_the_api() {
    for ts in test_stores().await {
        let (app, _) = app_with(&ts.store, |_| {});
        let path = "/portal/security/transaction-password";

        // No second factor: the page says one is needed, and the API's step-up rule refuses both forms.
        let (_, api_token) = register(&app, "web-cred-nofactor@example.com").await;
        let (token, _) = web_login(&app, "web-cred-nofactor@example.com").await;
        let session = [("__Host-kinko-session", token.as_str())];
        let page = web(&app, Method::GET, path, &session, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_security_headers(&page, path);
        assert!(page.text.contains(r#"id="needs-factor""#) && page.text.contains("not set"), "{}", page.text);
        assert!(page.text.contains(r#"<label for="transaction-password">"#), "{}", page.text);
        let csrf = page.csrf();
        let new = [
            ("csrf", csrf.as_str()),
            ("password", "a new transaction password"),
            ("repeat", "a new transaction password"),
        ];
        let r = web(&app, Method::POST, path, &session, Some(ORIGIN), &new).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.content_type().starts_with("text/html"), "{}", r.content_type());
        assert!(r.text.contains("Stronger authentication required"), "{}", r.text);
        assert!(r.text.contains("urn:kinko:problem:step-up-required") && r.text.contains(r#"role="alert""#));
        let r =
            web(&app, Method::POST, "/portal/security/totp/remove", &session, Some(ORIGIN), &[("csrf", &csrf)]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("urn:kinko:problem:step-up-required"), "{}", r.text);
        let status = raw_call(&app, Method::GET, "/v1/mfa", Some(&api_token), None, None).await;
        assert_eq!(status.json["transaction_password"], false, "{}", status.text);

        // A customer with TOTP, its factor proven on the web session (which opens the step-up window).
        let (_, api_token) = register(&app, "web-cred@example.com").await;
        let (_, recovery_codes, _) = enrol_totp(&app, &api_token).await;
        let (token, _) = web_login(&app, "web-cred@example.com").await;
        let session = [("__Host-kinko-session", token.as_str())];
        let form = web(&app, Method::GET, "/login/second-factor", &session, None, &[]).await;
        let code = [("csrf", form.csrf()), ("method", "recovery_code".into()), ("code", recovery_codes[0].clone())];
        let code: Vec<(&str, &str)> = code.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = web(&app, Method::POST, "/login/second-factor", &session, Some(ORIGIN), &code).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/portal"), "{}", r.text);
        let security = web(&app, Method::GET, "/portal/security", &session, None, &[]).await;
        assert!(security.text.contains(r#"href="/portal/security/transaction-password""#), "{}", security.text);
        assert!(security.text.contains(r#"action="/portal/security/totp/remove""#), "{}", security.text);
        let page = web(&app, Method::GET, path, &session, None, &[]).await;
        assert!(!page.text.contains("needs-step-up") && !page.text.contains("needs-factor"), "{}", page.text);
        let csrf = page.csrf();

        // CSRF: another session's token, and a POST with no origin at all.
        let forged = [
            ("csrf", "00".repeat(32)),
            ("password", "a new transaction password".into()),
            ("repeat", "a new transaction password".into()),
        ];
        let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = web(&app, Method::POST, path, &session, Some(ORIGIN), &forged).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("Form expired or not from this session"), "{}", r.text);
        let r = web(&app, Method::POST, path, &session, None, &new).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("Cross-site request refused"), "{}", r.text);
        let r = web(&app, Method::POST, "/portal/security/totp/remove", &session, Some(ORIGIN), &[("csrf", "x")]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(r.text.contains("Form expired or not from this session"), "{}", r.text);

        // The API's rules, named: the repeat typo, too short, the login password.
        for (password, repeat, named) in [
            (
                "a new transaction password",
                "a new transaction passw0rd",
                "is not the same as the new transaction password",
            ),
            ("short", "short", "must be 12 to 128 characters"),
            (PASSWORD, PASSWORD, "must differ from the login password"),
        ] {
            let f = [("csrf", csrf.as_str()), ("password", password), ("repeat", repeat)];
            let r = web(&app, Method::POST, path, &session, Some(ORIGIN), &f).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{named}: {}", r.text);
            assert!(r.text.contains(named) && r.text.contains(r#"role="alert""#), "{named}: {}", r.text);
        }
        let status = raw_call(&app, Method::GET, "/v1/mfa", Some(&api_token), None, None).await;
        assert_eq!(status.json["transaction_password"], false, "nothing refused was set: {}", status.text);

        // Set: the API reports it, and the page offers to change it.
        let new = [
            ("csrf", csrf.as_str()),
            ("password", "a new transaction password"),
            ("repeat", "a new transaction password"),
        ];
        let r = web(&app, Method::POST, path, &session, Some(ORIGIN), &new).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(r.text.contains("Transaction password set"), "{}", r.text);
        let status = raw_call(&app, Method::GET, "/v1/mfa", Some(&api_token), None, None).await;
        assert_eq!(status.json["transaction_password"], true, "{}", status.text);
        let page = web(&app, Method::GET, path, &session, None, &[]).await;
        assert!(page.text.contains("Change the transaction password"), "{}", page.text);

        // Remove the app: the API lists no TOTP factor and no recovery codes; again, the API's 404 is named.
        let r =
            web(&app, Method::POST, "/portal/security/totp/remove", &session, Some(ORIGIN), &[("csrf", &csrf)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(
            r.text.contains("Authenticator app removed") && r.text.contains(r#"id="no-factor-left""#),
            "{}",
            r.text
        );
        let status = raw_call(&app, Method::GET, "/v1/mfa", Some(&api_token), None, None).await;
        assert_eq!(
            (status.json["totp"].clone(), status.json["recovery_codes_remaining"].clone()),
            (json!(false), json!(0))
        );
        let r =
            web(&app, Method::POST, "/portal/security/totp/remove", &session, Some(ORIGIN), &[("csrf", &csrf)]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        assert!(r.text.contains("no TOTP factor is active") && r.text.contains(r#"role="alert""#), "{}", r.text);
        let security = web(&app, Method::GET, "/portal/security", &session, None, &[]).await;
        assert!(security.text.contains("not set up") && !security.text.contains("totp/remove"), "{}", security.text);
    }
}

// ---------------------------------------------------------------------------------------------------
// The operator console's key pages (web::ops_keys; K2, K7, K8, L2).

/// One browser-like request to an `/ops` page with the operator's cookie (the ops API's bearer token) and
/// the TCP peer the ops API records as the terminal.
async fn ops_web(
    app: &Router,
    method: Method,
    path: &str,
    token: &str,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> Page {
    let mut b = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, HOST)
        .header(header::COOKIE, format!("{}={token}", kinko_server::web::ops::OPS_SESSION_COOKIE));
    if let Some(o) = origin {
        b = b.header(header::ORIGIN, o);
        if o == ORIGIN {
            b = b.header("sec-fetch-site", "same-origin");
        }
    }
    let mut req = if method == Method::POST {
        let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(Body::from(body.join("&"))).unwrap()
    } else {
        b.body(Body::empty()).unwrap()
    };
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(support::ops::PEER.parse::<std::net::SocketAddr>().unwrap()));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    Page { status, headers, text: String::from_utf8_lossy(&bytes).to_string() }
}

/// K8, L2, M1: the key pages call the API's handlers with the operator's roles. A signing operator is refused
/// the key access log with an HTML page naming the rule (never a blank page), a log inspector reads it; the
/// keys page lists the lifecycle state and the moves allowed next, offers the request form only to a
/// requesting role; a key_transition requested there is the API's (wrong role 403 named, CSRF refused on
/// every new form, cross-site refused), approved, executed from the request page by the signing operator
/// (the key moves in the store), and destruction's execution is refused naming `kinko key destroy`.
#[tokio::test]
async fn k8_l2_web_key_pages_request_execute_and_access_log_refusals() {
    use kinko_core::operators::Decision;
    for ts in test_stores().await {
        let name = ts.name;
        let o = support::ops::Ops::staffed(ts).await;
        let key = kinko_store::signer_records::KeyRecord {
            id: "hot-web".into(),
            purpose: "hot_wallet".into(),
            chain: "ethereum".into(),
            address: "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".into(),
            wrapped_hex: String::new(),
            state: "active".into(),
            created_at_ms: support::ops::now_ms(),
        };
        assert!(o.ts.store.insert_key(&key).await.unwrap());
        let (so, ko, li) = (o.token("so1"), o.token("ko1"), o.token("li1"));

        // The key access log: not for a signing operator — an HTML page naming the rule and who may.
        let refused = ops_web(&o.app, Method::GET, "/ops/key-access-log", &so, None, &[]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{name}: {}", refused.text);
        assert!(refused.content_type().starts_with("text/html"), "{name}: {}", refused.content_type());
        assert_security_headers(&refused, "refused key access log");
        for needle in ["<h1>", r#"role="alert""#, "/v1/ops/key-access-log is for log_inspector, administrator"] {
            assert!(refused.text.contains(needle), "{name}: {needle} in {}", refused.text);
        }
        let log = ops_web(&o.app, Method::GET, "/ops/key-access-log", &li, None, &[]).await;
        assert_eq!(log.status, StatusCode::OK, "{name}: {}", log.text);
        assert!(log.text.contains("Key access log") && log.text.contains("No key access recorded"), "{}", log.text);

        // The keys page: state and the lifecycle's next moves; the form for requesting roles only.
        let page = ops_web(&o.app, Method::GET, "/ops/keys", &so, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{name}: {}", page.text);
        assert!(page.text.contains(r#"data-key-id="hot-web""#), "{name}: {}", page.text);
        assert!(page.text.contains("deactivated_standby, suspended_routine, suspended_emergency"), "{}", page.text);
        assert!(page.text.contains(r#"action="/ops/keys""#), "{name}: the signing operator gets the form");
        let csrf_so = page.csrf();
        let li_page = ops_web(&o.app, Method::GET, "/ops/keys", &li, None, &[]).await;
        assert!(
            li_page.text.contains(r#"id="may-not-request""#) && !li_page.text.contains(r#"action="/ops/keys""#),
            "{name}: {}",
            li_page.text
        );

        // CSRF: a wrong token and a cross-site post are refused, and no request is opened.
        let form = |csrf: &'static str| {
            [("csrf", csrf), ("key_id", "hot-web"), ("to_state", "deactivated_standby"), ("reason", "end of day")]
        };
        let bad = ops_web(&o.app, Method::POST, "/ops/keys", &so, Some(ORIGIN), &form("0")).await;
        assert_eq!(bad.status, StatusCode::FORBIDDEN, "{name}: {}", bad.text);
        assert!(bad.text.contains("csrf-token-invalid"), "{name}: {}", bad.text);
        let mut good = form("0");
        good[0].1 = &csrf_so;
        let cross = ops_web(&o.app, Method::POST, "/ops/keys", &so, Some("http://evil.example"), &good).await;
        assert_eq!(cross.status, StatusCode::FORBIDDEN, "{name}: {}", cross.text);
        let key_requests = || async {
            let all = o.ts.store.ops_requests(None, 100).await.unwrap();
            all.into_iter().filter(|r| r.kind == "key_transition").count()
        };
        assert_eq!(key_requests().await, 0, "{name}: nothing was requested");

        // The wrong role: a key operator asks for an activation move — the API's requester-role rule, named.
        let ko_csrf = ops_web(&o.app, Method::GET, "/ops/keys", &ko, None, &[]).await.csrf();
        let mut wrong = good;
        wrong[0].1 = &ko_csrf;
        let r = ops_web(&o.app, Method::POST, "/ops/keys", &ko, Some(ORIGIN), &wrong).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.text.contains("requester-role") && r.text.contains("signing_operator"), "{name}: {}", r.text);

        // Requested by the signing operator: the request page, where it waits for the signing manager.
        let r = ops_web(&o.app, Method::POST, "/ops/keys", &so, Some(ORIGIN), &good).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{name}: {}", r.text);
        let id = r.location().strip_prefix("/ops/requests/").expect("the request's page").to_string();
        let row = o.ts.store.ops_request(&id).await.unwrap().unwrap();
        assert_eq!(
            (row.process.as_str(), row.kind.as_str(), row.requester.as_str()),
            ("activation", "key_transition", "so1")
        );
        let shown = ops_web(&o.app, Method::GET, &format!("/ops/requests/{id}"), &so, None, &[]).await;
        assert!(shown.text.contains(&format!("kinko ops sign {id}")), "{name}: the page names the signing command");
        assert!(!shown.text.contains("/execute\""), "{name}: nothing to execute before approval");
        assert_eq!(o.decide("sm1", &id, Decision::Approve).await.status, StatusCode::OK);

        // Execute: the form for the approved request; CSRF refused; then executed by the signing operator.
        let shown = ops_web(&o.app, Method::GET, &format!("/ops/requests/{id}"), &so, None, &[]).await;
        assert!(shown.text.contains(&format!(r#"action="/ops/requests/{id}/execute""#)), "{name}: {}", shown.text);
        assert!(shown.text.contains(r#"<label for="evidence">"#), "{name}: the evidence field is labelled");
        let path = format!("/ops/requests/{id}/execute");
        let bad = ops_web(&o.app, Method::POST, &path, &so, Some(ORIGIN), &[("csrf", "0"), ("evidence", "")]).await;
        assert_eq!(bad.status, StatusCode::FORBIDDEN, "{name}: {}", bad.text);
        assert!(bad.text.contains("csrf-token-invalid"), "{name}: {}", bad.text);
        let cross = ops_web(&o.app, Method::POST, &path, &so, Some("http://evil.example"), &[("csrf", &csrf_so)]).await;
        assert_eq!(cross.status, StatusCode::FORBIDDEN, "{name}: {}", cross.text);
        let bad_json =
            ops_web(&o.app, Method::POST, &path, &so, Some(ORIGIN), &[("csrf", &csrf_so), ("evidence", "{")]).await;
        assert_eq!(bad_json.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", bad_json.text);
        assert!(bad_json.text.contains("evidence") && bad_json.text.contains("is not JSON"), "{}", bad_json.text);
        assert_eq!(o.ts.store.key("hot-web").await.unwrap().unwrap().state, "active", "{name}: not yet");
        let done =
            ops_web(&o.app, Method::POST, &path, &so, Some(ORIGIN), &[("csrf", &csrf_so), ("evidence", "")]).await;
        assert_eq!((done.status, done.location()), (StatusCode::SEE_OTHER, format!("/ops/requests/{id}").as_str()));
        assert_eq!(o.ts.store.key("hot-web").await.unwrap().unwrap().state, "deactivated_standby", "{name}");
        let keys = ops_web(&o.app, Method::GET, "/ops/keys", &so, None, &[]).await;
        assert!(keys.text.contains(r#"<td class="key-state">deactivated_standby</td>"#), "{name}: {}", keys.text);

        // Destruction: requested by the key operator, approved by an operations manager; executing it in the
        // console is refused by the API, and the page names the command for the custody host.
        let r = ops_web(
            &o.app,
            Method::POST,
            "/ops/keys",
            &ko,
            Some(ORIGIN),
            &[("csrf", &ko_csrf), ("key_id", "hot-web"), ("to_state", "destroyed"), ("reason", "retired")],
        )
        .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{name}: {}", r.text);
        let destroy = r.location().strip_prefix("/ops/requests/").unwrap().to_string();
        assert_eq!(o.ts.store.ops_request(&destroy).await.unwrap().unwrap().process, "destruction");
        assert_eq!(o.decide("om1", &destroy, Decision::Approve).await.status, StatusCode::OK);
        let path = format!("/ops/requests/{destroy}/execute");
        let r = ops_web(&o.app, Method::POST, &path, &ko, Some(ORIGIN), &[("csrf", &ko_csrf), ("evidence", "")]).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert!(r.text.contains("execute-with-cli") && r.text.contains(r#"role="alert""#), "{name}: {}", r.text);
        assert!(
            r.text.contains(&format!("kinko key destroy --request {destroy} --confirm hot-web --key YOUR_KEY_FILE")),
            "{name}: the command is named: {}",
            r.text
        );
        assert_eq!(o.ts.store.key("hot-web").await.unwrap().unwrap().state, "deactivated_standby", "{name}");
    }
}

/// U1, M1 (web::kyc): the identity page shows the API's KYC state and submits the documents through the
/// API's own `submit_kyc`: refused while the e-mail address is unverified (the API's 403, on the page), a
/// bad reference refused as an HTML page naming `documents[0].reference` with the values kept, a forged or
/// cross-site form refused before anything is submitted, and a good submission is what `GET /v1/kyc` then
/// shows; afterwards the form is gone and a second submission is the API's 409.
#[tokio::test]
async fn u1_m1_web_kyc_page_submits_documents_through_the_api() {
    for ts in test_stores().await {
        let name = ts.name;
        let (app, _) = app_with(&ts.store, |c| c.onboarding.dev_auto_verify = false);
        let email = "web-kyc@example.com";
        let (_, api_token) = register(&app, email).await;
        let (token, _) = web_login(&app, email).await;
        let session = [("__Host-kinko-session", token.as_str())];

        let dashboard = web(&app, Method::GET, "/portal", &session, None, &[]).await;
        assert!(dashboard.text.contains(r#"id="kyc-link" href="/portal/kyc""#), "{name}: {}", dashboard.text);
        let page = web(&app, Method::GET, "/portal/kyc", &session, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{name}: {}", page.text);
        assert_security_headers(&page, "/portal/kyc");
        assert!(page.text.contains(r#"id="kyc-state" data-state="not_submitted""#), "{name}: {}", page.text);
        assert!(page.text.contains("kyc-needs-email"), "{name}: the unverified e-mail is not pointed out");
        for field in ["kyc-kind-1", "kyc-reference-1", "kyc-kind-3", "kyc-reference-3"] {
            assert!(page.text.contains(&format!(r#"<label for="{field}""#)), "{name}: no label for {field}");
        }
        let csrf = page.csrf();
        let good = [
            ("csrf", csrf.as_str()),
            ("kind_1", "passport"),
            ("reference_1", "dms://web-kyc/passport"),
            ("kind_2", "proof_of_address"),
            ("reference_2", "dms://web-kyc/utility-bill"),
            ("kind_3", "passport"),
            ("reference_3", ""),
        ];

        // The e-mail address is not verified yet: the API refuses, the page says so.
        let r = web(&app, Method::POST, "/portal/kyc", &session, Some(ORIGIN), &good).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.content_type().starts_with("text/html"), "{name}");
        assert!(r.text.contains("urn:kinko:problem:email-unverified") && r.text.contains(r#"role="alert""#));
        let mails = support::customer::deliver_mail(&ts.store).await;
        let verification = mails
            .iter()
            .rev()
            .filter(|m| m.to.contains(email))
            .find_map(|m| {
                m.body.lines().find_map(|l| l.trim().strip_prefix("Verification token: ").map(str::to_string))
            })
            .unwrap_or_else(|| panic!("{name}: no verification mail"));
        let v =
            raw_call(&app, Method::POST, "/v1/email-verifications", None, None, Some(json!({"token": verification})))
                .await;
        assert_eq!(v.status, StatusCode::OK, "{name}: {}", v.text);

        // A blank reference: the API's 422, as the form again naming the field, the values kept.
        let mut blank = good;
        blank[2] = ("reference_1", "   ");
        let r = web(&app, Method::POST, "/portal/kyc", &session, Some(ORIGIN), &blank).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert!(r.content_type().starts_with("text/html"), "{name}");
        assert!(r.text.contains("documents[0].reference"), "{name}: the field is not named: {}", r.text);
        assert!(r.text.contains("must be 1 to 200 bytes of printable text"), "{name}: {}", r.text);
        assert!(r.text.contains(r#"id="kyc-reference-1-error""#), "{name}: the row is not marked");
        assert!(r.text.contains(r#"value="dms://web-kyc/utility-bill""#), "{name}: the typed values are lost");
        assert!(r.text.contains(r#"<form method="post" action="/portal/kyc""#), "{name}: no form to correct");

        // CSRF: a token that is not the session's, and a cross-site post, submit nothing.
        let mut forged = good;
        forged[0] = ("csrf", "0000000000000000000000000000000000000000000000000000000000000000");
        let r = web(&app, Method::POST, "/portal/kyc", &session, Some(ORIGIN), &forged).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.text.contains("urn:kinko:problem:csrf-token-invalid"), "{name}: {}", r.text);
        let r = web(&app, Method::POST, "/portal/kyc", &session, Some("http://evil.example"), &good).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.text.contains("urn:kinko:problem:cross-site-request"), "{name}: {}", r.text);
        let api = raw_call(&app, Method::GET, "/v1/kyc", Some(&api_token), None, None).await;
        assert_eq!(api.json["state"], "not_submitted", "{name}: {}", api.text);

        // The good submission: 201 and the page shows it; the API shows exactly those documents.
        let r = web(&app, Method::POST, "/portal/kyc", &session, Some(ORIGIN), &good).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert!(r.text.contains(r#"id="kyc-submitted""#) && r.text.contains(r#"data-state="submitted""#));
        let api = raw_call(&app, Method::GET, "/v1/kyc", Some(&api_token), None, None).await;
        assert_eq!(api.json["state"], "submitted", "{name}: {}", api.text);
        assert_eq!(
            api.json["submission"]["documents"],
            json!([
                {"kind": "passport", "reference": "dms://web-kyc/passport"},
                {"kind": "proof_of_address", "reference": "dms://web-kyc/utility-bill"},
            ]),
            "{name}"
        );
        let page = web(&app, Method::GET, "/portal/kyc", &session, None, &[]).await;
        assert!(page.text.contains("dms://web-kyc/utility-bill") && page.text.contains("Proof of address"));
        assert!(!page.text.contains(r#"action="/portal/kyc""#), "{name}: the form is offered while submitted");
        let r = web(&app, Method::POST, "/portal/kyc", &session, Some(ORIGIN), &good).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert!(r.text.contains("urn:kinko:problem:kyc-state"), "{name}: {}", r.text);
    }
}

// ---------------------------------------------------------------------------------------------------
// The operator console's KYC queue and maintenance windows (web::ops_admin; U1, S4).

/// U1, S4, M1 (web::ops_admin): the KYC and maintenance pages call the API's handlers with the operator's
/// roles. A role the queue is not for gets an HTML page naming the rule (never a blank page); the forms are
/// offered to the roles the API allows, others see its refusal; a wrong-role form posted anyway is the API's
/// 403 on the page, a forged CSRF token records nothing, a blank reason is the form again naming `reason`;
/// the signing operator reviews and the operations manager decides, and `GET /v1/kyc` says verified. A
/// window whose end is before its start is the form again naming the end, the typed values kept; one
/// announced from now turns the portal's pages into the maintenance page while `/ops` keeps answering,
/// and cancelling it from the page opens the portal again.
#[tokio::test]
async fn u1_s4_m1_web_kyc_queue_and_maintenance_windows_through_the_api() {
    for ts in test_stores().await {
        let name = ts.name;
        let o =
            support::ops::Ops::staff(support::ops::ops_with(ts, |c| c.onboarding.dev_auto_verify = false).await).await;
        let (so, om, li, admin) = (o.token("so1"), o.token("om1"), o.token("li1"), o.token("admin2"));
        // A customer with a verified e-mail address submits documents through the API.
        let email = "ops-admin-kyc@example.com";
        let (_, customer) = o.customer(email).await;
        let mails = support::customer::deliver_mail(&o.ts.store).await;
        let verification = mails
            .iter()
            .rev()
            .filter(|m| m.to.contains(email))
            .find_map(|m| {
                m.body.lines().find_map(|l| l.trim().strip_prefix("Verification token: ").map(str::to_string))
            })
            .unwrap_or_else(|| panic!("{name}: no verification mail"));
        let r = o.call(Method::POST, "/v1/email-verifications", None, Some(json!({"token": verification}))).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let docs = json!({"documents": [{"kind": "passport", "reference": "dms://ops-admin/passport"}]});
        let r = o.call(Method::POST, "/v1/kyc", Some(&customer), Some(docs)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        let kyc_state = || async { o.ts.store.kyc_submission(&id).await.unwrap().unwrap().state.as_str().to_string() };

        // Not for an administrator: an HTML page naming the rule and who may.
        let refused = ops_web(&o.app, Method::GET, "/ops/kyc", &admin, None, &[]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{name}: {}", refused.text);
        assert!(refused.content_type().starts_with("text/html"), "{name}");
        assert_security_headers(&refused, "refused KYC queue");
        for needle in
            ["<h1>", r#"role="alert""#, "/v1/ops/kyc is for signing_operator, operations_manager, log_inspector"]
        {
            assert!(refused.text.contains(needle), "{name}: {needle} in {}", refused.text);
        }
        // The log inspector reads the queue; the forms are not theirs and the page says whose they are.
        let page = ops_web(&o.app, Method::GET, "/ops/kyc", &li, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{name}: {}", page.text);
        assert!(page.text.contains(&format!(r#"data-case-id="{id}""#)), "{name}: {}", page.text);
        assert!(page.text.contains(r#"id="may-not-review""#) && page.text.contains(r#"id="may-not-decide""#));
        assert!(page.text.contains("review is for signing_operator"), "{name}: {}", page.text);
        assert!(!page.text.contains("/review\""), "{name}: no review form for a log inspector");
        let li_csrf = page.csrf();
        let review_path = format!("/ops/kyc/{id}/review");
        let so_page = ops_web(&o.app, Method::GET, "/ops/kyc", &so, None, &[]).await;
        assert!(so_page.text.contains(&format!(r#"action="{review_path}""#)), "{name}: {}", so_page.text);
        let so_csrf = so_page.csrf();

        // A forged token: refused, nothing recorded. The wrong role posting anyway: the API's 403, named.
        let bad = ops_web(&o.app, Method::POST, &review_path, &so, Some(ORIGIN), &[("csrf", "0")]).await;
        assert_eq!(bad.status, StatusCode::FORBIDDEN, "{name}: {}", bad.text);
        assert!(bad.text.contains("csrf-token-invalid") && bad.text.contains(r#"role="alert""#), "{}", bad.text);
        let cross =
            ops_web(&o.app, Method::POST, &review_path, &so, Some("http://evil.example"), &[("csrf", &so_csrf)]).await;
        assert_eq!(cross.status, StatusCode::FORBIDDEN, "{name}: {}", cross.text);
        let wrong = ops_web(&o.app, Method::POST, &review_path, &li, Some(ORIGIN), &[("csrf", &li_csrf)]).await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{name}: {}", wrong.text);
        assert!(wrong.content_type().starts_with("text/html"), "{name}");
        assert!(wrong.text.contains("review is for signing_operator") && wrong.text.contains(r#"role="alert""#));
        assert_eq!(kyc_state().await, "submitted", "{name}: nothing recorded");

        // The signing operator takes the case.
        let r = ops_web(&o.app, Method::POST, &review_path, &so, Some(ORIGIN), &[("csrf", &so_csrf)]).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/ops/kyc"), "{name}: {}", r.text);
        assert_eq!(kyc_state().await, "under_review", "{name}");

        // The decision: not the signing operator's (the API's rule, named); a blank reason is the form again.
        let decision_path = format!("/ops/kyc/{id}/decision");
        let om_page = ops_web(&o.app, Method::GET, "/ops/kyc", &om, None, &[]).await;
        assert!(om_page.text.contains(&format!(r#"action="{decision_path}""#)), "{name}: {}", om_page.text);
        assert!(om_page.text.contains(&format!(r#"<label for="reason-{id}">"#)), "{name}: the reason is labelled");
        let om_csrf = om_page.csrf();
        let form = |csrf: &str, reason: &str| {
            vec![
                ("csrf".to_string(), csrf.to_string()),
                ("decision".into(), "verified".into()),
                ("reason".into(), reason.to_string()),
            ]
        };
        let post = |token: String, f: Vec<(String, String)>| {
            let path = decision_path.clone();
            let app = o.app.clone();
            async move {
                let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                ops_web(&app, Method::POST, &path, &token, Some(ORIGIN), &f).await
            }
        };
        let r = post(so.clone(), form(&so_csrf, "documents checked")).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.text.contains("decision is for operations_manager"), "{name}: {}", r.text);
        let r = post(om.clone(), form("0", "documents checked")).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.text.contains("csrf-token-invalid"), "{name}: {}", r.text);
        let r = post(om.clone(), form(&om_csrf, "  ")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert!(r.text.contains(&format!(r#"id="reason-{id}-error""#)), "{name}: the field is not marked: {}", r.text);
        assert!(r.text.contains(&format!(r#"action="{decision_path}""#)), "{name}: no form to correct");
        assert_eq!(kyc_state().await, "under_review", "{name}: nothing decided");
        let r = post(om.clone(), form(&om_csrf, "passport matches the applicant")).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/ops/kyc"), "{name}: {}", r.text);
        let r = o.call(Method::GET, "/v1/kyc", Some(&customer), None).await;
        assert_eq!(r.json["state"], "verified", "{name}: {}", r.text);

        // Maintenance: everyone reads the windows; the form is the operations manager's and the administrator's.
        let page = ops_web(&o.app, Method::GET, "/ops/maintenance", &li, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{name}: {}", page.text);
        assert!(page.text.contains(r#"id="may-not-announce""#) && !page.text.contains(r#"id="announce""#));
        let li_csrf = page.csrf();
        let page = ops_web(&o.app, Method::GET, "/ops/maintenance", &om, None, &[]).await;
        for field in ["starts", "ends", "message"] {
            assert!(page.text.contains(&format!(r#"<label for="{field}">"#)), "{name}: no label for {field}");
        }
        let om_csrf = page.csrf();
        let window = |csrf: &'static str, starts: &'static str, ends: &'static str| {
            [("csrf", csrf), ("starts", starts), ("ends", ends), ("message", "Upgrading the node; back soon.")]
        };
        let windows = || async { o.ts.store.maintenance_windows().await.unwrap().len() };
        let r = ops_web(&o.app, Method::POST, "/ops/maintenance", &om, Some(ORIGIN), &window("0", "now", "30")).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.text.contains("csrf-token-invalid"), "{name}: {}", r.text);
        let mut f = window("0", "now", "30");
        f[0].1 = &li_csrf;
        let r = ops_web(&o.app, Method::POST, "/ops/maintenance", &li, Some(ORIGIN), &f).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.text.contains("maintenance-windows is for operations_manager, administrator"), "{}", r.text);
        assert_eq!(windows().await, 0, "{name}: nothing announced");
        // The end before the start: the API's 422, the form again naming the end, the typed values kept.
        let mut f = window("0", "now", "2020-01-01 00:00");
        f[0].1 = &om_csrf;
        let r = ops_web(&o.app, Method::POST, "/ops/maintenance", &om, Some(ORIGIN), &f).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert!(r.text.contains("ends_at_ms") && r.text.contains("must be after starts_at_ms"), "{}", r.text);
        assert!(r.text.contains(r#"id="ends-error""#) && r.text.contains(r#"value="2020-01-01 00:00""#), "{}", r.text);
        assert!(r.text.contains("Upgrading the node; back soon.") && r.text.contains(r#"id="announce""#));
        let mut f = window("0", "soon", "30");
        f[0].1 = &om_csrf;
        let r = ops_web(&o.app, Method::POST, "/ops/maintenance", &om, Some(ORIGIN), &f).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert!(r.text.contains(r#"id="starts-error""#), "{name}: the start is not named: {}", r.text);
        assert_eq!(windows().await, 0, "{name}: nothing announced");

        // Announced from now: the portal answers the maintenance page, the console keeps working.
        let mut f = window("0", "now", "30");
        f[0].1 = &om_csrf;
        let r = ops_web(&o.app, Method::POST, "/ops/maintenance", &om, Some(ORIGIN), &f).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/ops/maintenance"), "{name}: {}", r.text);
        let portal = web(&o.app, Method::GET, "/login", &[], None, &[]).await;
        assert_eq!(portal.status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {}", portal.text);
        assert!(portal.text.contains("Upgrading the node; back soon."), "{name}: {}", portal.text);
        let page = ops_web(&o.app, Method::GET, "/ops/maintenance", &om, None, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{name}: {}", page.text);
        assert!(page.text.contains(r#"<td class="window-state">in force</td>"#), "{name}: {}", page.text);
        let wid = o.ts.store.maintenance_windows().await.unwrap()[0].id.clone();
        let cancel = format!("/ops/maintenance/{wid}/cancel");
        assert!(page.text.contains(&format!(r#"action="{cancel}""#)), "{name}: no cancel button");
        let r = ops_web(&o.app, Method::POST, &cancel, &om, Some(ORIGIN), &[("csrf", "0")]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert_eq!(web(&o.app, Method::GET, "/login", &[], None, &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
        let r = ops_web(&o.app, Method::POST, &cancel, &om, Some(ORIGIN), &[("csrf", &om_csrf)]).await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/ops/maintenance"), "{name}: {}", r.text);
        assert_eq!(web(&o.app, Method::GET, "/login", &[], None, &[]).await.status, StatusCode::OK, "{name}");
        // Cancelled twice: the API's 409, on the page.
        let r = ops_web(&o.app, Method::POST, &cancel, &om, Some(ORIGIN), &[("csrf", &om_csrf)]).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert!(r.text.contains("window-closed") && r.text.contains(r#"role="alert""#), "{name}: {}", r.text);
    }
}
