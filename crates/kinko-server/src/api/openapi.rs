//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    account, accounts, address_book, auth, internal_transfers, login_protection, mfa, onboarding, ops, ops_auth,
    ops_registry, ops_requests, problem, withdrawals,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "kinko customer API", description = "Custody: deposits and withdrawals. Amounts are decimal strings in base units; errors are RFC 9457 application/problem+json."),
    paths(
        auth::create_customer,
        auth::create_session,
        mfa::step_up,
        mfa::status,
        mfa::start_totp,
        mfa::delete_totp,
        mfa::confirm_totp,
        mfa::webauthn_register_start,
        mfa::webauthn_register_finish,
        mfa::webauthn_authenticate_start,
        mfa::webauthn_authenticate_finish,
        mfa::set_transaction_password,
        login_protection::login_history,
        accounts::deposit_address,
        accounts::balances,
        accounts::list_deposits,
        accounts::get_deposit,
        withdrawals::create_withdrawal,
        withdrawals::get_withdrawal,
        withdrawals::cancel_withdrawal,
        withdrawals::list_withdrawals,
        super::withdrawal_confirmation::confirm_withdrawal,
        address_book::add_entry,
        address_book::list_entries,
        address_book::remove_entry,
        address_book::create_challenge,
        address_book::bind_wallet,
        address_book::list_bindings,
        internal_transfers::create_internal_transfer,
        internal_transfers::list_internal_transfers,
        account::delete_account,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
        ops_auth::enrol,
        ops_auth::create_session,
        ops_auth::me,
        ops_registry::list_operators,
        ops_registry::registry_head,
        ops_registry::create_registry_change,
        ops_requests::create_request,
        ops_requests::list_requests,
        ops_requests::get_request,
        ops_requests::decide,
        ops_requests::execute,
        ops_requests::inspect,
        ops_requests::events,
        ops_requests::list_keys,
        crate::aml::list_cases,
        super::freezes::create_freeze,
        super::freezes::list_freezes,
        super::freezes::get_reconciliation,
        super::freezes::run_reconciliation,
        crate::maintenance::create_window,
        crate::maintenance::list_windows,
        crate::maintenance::cancel_window,
        crate::maintenance::status,
        crate::audit::search,
        crate::audit::inspection,
        crate::audit::key_access_log,
        onboarding::verify_email,
        onboarding::resend_verification,
        onboarding::submit_kyc,
        onboarding::kyc_status,
        onboarding::ops_list,
        onboarding::ops_review,
        onboarding::ops_decide,
    ),
    components(schemas(problem::ProblemBody, problem::FieldError)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let http =
            HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("token from POST /v1/sessions")).build();
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}
