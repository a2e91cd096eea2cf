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
        let view = raw_call(&app, Method::GET, &format!("/v1/withdrawals/{id}"), Some(&c.token), None, None).await;
        assert_eq!(view.json["status"], "awaiting_confirmation", "opening the link confirmed it");

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
    }
}
