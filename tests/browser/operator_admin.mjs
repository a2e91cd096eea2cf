// The operator console's KYC queue and maintenance windows in Chromium (issue #8; U1, S4). Run by
// crates/kinko/tests/web_ops_admin.rs, which sets up kinko, the operators and a customer whose KYC documents
// are submitted through the API.
//
// Journey: the signing operator logs in and takes the case for review on /ops/kyc; the operations manager
// logs in and decides it "verified" with a reason; then announces a maintenance window starting now on
// /ops/maintenance; a customer page (/login) is the maintenance page (503, the notice shown) while /ops
// keeps answering; the manager cancels the window and /login answers 200 again. Every page goes through
// `checkPage` (screenshots at 375 and 1280 px into the artifacts dir).
//
// usage: node tests/browser/operator_admin.mjs <base-url> <artifacts-dir>
// environment: KINKO_ADMIN_CASE (the submission id), KINKO_ADMIN_NOTICE (the window's notice),
//   KINKO_ADMIN_{REV,MGR}_{ID,PASSWORD,TOTP} (the signing operator and the operations manager).

import { createRun, env, launchChromium, submit, textOf } from './lib.mjs';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node tests/browser/operator_admin.mjs <base-url> <artifacts-dir>');
  process.exit(2);
}
const CHROMIUM = env('KINKO_CHROMIUM', '/usr/bin/chromium');
const CASE = env('KINKO_ADMIN_CASE');
const NOTICE = env('KINKO_ADMIN_NOTICE');
const operator = (x) => ({
  id: env(`KINKO_ADMIN_${x}_ID`),
  password: env(`KINKO_ADMIN_${x}_PASSWORD`),
  totp: env(`KINKO_ADMIN_${x}_TOTP`),
});
const OVERALL_TIMEOUT_MS = 240_000;

const run = createRun({
  tag: 'ops-admin',
  artifacts,
  fields: { case_states: {}, window_states: {}, maintenance_notice: null, window_id: null },
  timeoutMs: OVERALL_TIMEOUT_MS,
});
const { result, check, checkPage, problemShown, opsLogIn, opsLogOut } = run;

const text = textOf;
const caseState = (page) => text(page, `tr[data-case-id="${CASE}"] td.kyc-state`);

async function journey(page) {
  const rev = operator('REV');
  const mgr = operator('MGR');

  // The signing operator takes the case for review.
  await opsLogIn(page, base, rev, 'rev');
  let r = await page.goto(`${base}/ops/kyc`);
  await checkPage(page, 'rev-kyc', r, { status: 200 });
  result.case_states.before = await caseState(page);
  check(result.case_states.before === 'submitted', `rev-kyc: the case is ${result.case_states.before}`);
  check((await page.locator('#may-not-decide').count()) === 1, 'rev-kyc: the decision form is offered to a signing operator');
  r = await submit(page, `form[action="/ops/kyc/${CASE}/review"] button[type=submit]`);
  await checkPage(page, 'rev-reviewed', r, { status: 200 });
  result.case_states.reviewed = await caseState(page);
  check(result.case_states.reviewed === 'under_review', `rev-reviewed: the case is ${result.case_states.reviewed}`);
  await opsLogOut(page, base, 'rev');

  // The operations manager decides it.
  await opsLogIn(page, base, mgr, 'mgr');
  r = await page.goto(`${base}/ops/kyc?state=under_review`);
  await checkPage(page, 'mgr-kyc', r, { status: 200 });
  check((await page.locator('#may-not-review').count()) === 1, 'mgr-kyc: the review form is offered to a manager');
  await page.selectOption(`#decision-${CASE}`, 'verified');
  await page.fill(`#reason-${CASE}`, 'Passport checked against the applicant (browser test)');
  r = await submit(page, `form[action="/ops/kyc/${CASE}/decision"] button[type=submit]`);
  await checkPage(page, 'mgr-decided', r, { status: 200 });
  result.case_states.decided = await caseState(page);
  check(result.case_states.decided === 'verified', `mgr-decided: the case is ${result.case_states.decided}`);

  // A window from now: first one whose end is before its start (the form names the end), then the real one.
  r = await page.goto(`${base}/ops/maintenance`);
  await checkPage(page, 'mgr-maintenance', r, { status: 200 });
  await page.fill('#starts', 'now');
  await page.fill('#ends', '2020-01-01 00:00');
  await page.fill('#message', NOTICE);
  r = await submit(page, 'form#announce button[type=submit]');
  await checkPage(page, 'mgr-window-refused', r, { status: 422 });
  await problemShown(page, 'mgr-window-refused', 'ends_at_ms');
  check((await page.locator('#ends-error').count()) === 1, 'mgr-window-refused: the end field is not marked');
  check((await page.inputValue('#message')) === NOTICE, 'mgr-window-refused: the notice typed is lost');
  await page.fill('#ends', '30');
  r = await submit(page, 'form#announce button[type=submit]');
  await checkPage(page, 'mgr-announced', r, { status: 200 });
  const row = page.locator('tr[data-window-id]').first();
  result.window_id = await row.getAttribute('data-window-id');
  result.window_states.announced = await text(page, 'tr[data-window-id] td.window-state');
  check(result.window_states.announced === 'in force', `mgr-announced: the window is ${result.window_states.announced}`);

  // A customer page is the maintenance page; the console keeps answering.
  r = await page.goto(`${base}/login`);
  await checkPage(page, 'portal-maintenance', r, { status: 503 });
  result.maintenance_notice = await text(page, '#maintenance-message');
  check(result.maintenance_notice === NOTICE, `portal-maintenance: the notice shown is ${result.maintenance_notice}`);
  r = await page.goto(`${base}/ops`);
  await checkPage(page, 'ops-during-maintenance', r, { status: 200 });

  // The manager cancels the window; the portal answers again.
  r = await page.goto(`${base}/ops/maintenance`);
  await checkPage(page, 'mgr-maintenance-in-force', r, { status: 200 });
  r = await submit(page, `form[action="/ops/maintenance/${result.window_id}/cancel"] button[type=submit]`);
  await checkPage(page, 'mgr-cancelled', r, { status: 200 });
  result.window_states.cancelled = await text(page, `tr[data-window-id="${result.window_id}"] td.window-state`);
  check(result.window_states.cancelled.startsWith('cancelled'), `mgr-cancelled: the window is ${result.window_states.cancelled}`);
  r = await page.goto(`${base}/login`);
  await checkPage(page, 'portal-open', r, { status: 200 });
}

async function main() {
  const { page, close } = await launchChromium(CHROMIUM);
  try {
    run.watchCsp(page);
    await journey(page);
    run.checkNoCspViolations();
  } finally {
    await close();
  }
}

run.main(main);
