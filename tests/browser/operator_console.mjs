// The operator console in Chromium (issue #8; K8, K7, M10, M1, L2). Run by crates/kinko/tests/web_ops.rs, which
// sets up kinko and the operators; KINKO_OPS_JOURNEY picks the journey:
//   withdrawal (default)  two signing managers approve a large withdrawal after reading the transaction decoded
//                         from the payload (A pastes the signature the real `kinko ops sign` printed on their
//                         terminal), and a log inspector sees it executed and inspects it;
//   keys-request          a signing operator requests a key lifecycle action on /ops/keys;
//   keys-approve          a signing manager approves it with a `kinko ops sign` signature, the signing operator
//                         executes it from the request page and sees the key's new state, is refused the key
//                         access log (an error page naming the rule), and a log inspector reads that log.
//
// usage: node tests/browser/operator_console.mjs <base-url> <artifacts-dir>   (environment: see below)

import { createRun, env, launchChromium, submit, textOf } from './lib.mjs';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node tests/browser/operator_console.mjs <base-url> <artifacts-dir>');
  process.exit(2);
}
const CHROMIUM = env('KINKO_CHROMIUM', '/usr/bin/chromium');
const JOURNEY = env('KINKO_OPS_JOURNEY', 'withdrawal');
// `after`: the TOTP step the operator's command-line log-in already used (each code is used once), if any.
const operator = (x) => ({
  id: env(`KINKO_OPS_${x}_ID`),
  password: env(`KINKO_OPS_${x}_PASSWORD`),
  totp: env(`KINKO_OPS_${x}_TOTP`),
  signature: process.env[`KINKO_OPS_${x}_SIGNATURE`],
  after: process.env[`KINKO_OPS_${x}_TOTP_AFTER`] === undefined ? -1 : Number(process.env[`KINKO_OPS_${x}_TOTP_AFTER`]),
});
const OVERALL_TIMEOUT_MS = 240_000;

const run = createRun({
  tag: 'ops',
  artifacts,
  fields: { cookie: null, decoded: null, approval_message: null, totp_steps: {} },
  timeoutMs: OVERALL_TIMEOUT_MS,
});
const { result, check, checkPage, opsLogIn, opsLogOut } = run;

const text = textOf;

// Queue → the request → the decoded transaction → paste the signature → approve.
async function approve(page, context, who, tag, { REQUEST, INTENT_HASH, DESTINATION, AMOUNT }) {
  let r = await opsLogIn(page, base, who, tag);
  await checkPage(page, `${tag}-queue`, r, { status: 200 });
  const link = page.locator(`main a[href="/ops/requests/${REQUEST}"]`);
  check((await link.count()) === 1, `${tag}-queue: request ${REQUEST} is not in the queue`);
  [r] = await Promise.all([page.waitForNavigation(), link.first().click()]);
  await checkPage(page, `${tag}-request`, r, { status: 200 });

  // What the signer will sign, decoded from the payload.
  const decoded = {
    destination: await text(page, '#decoded-destination'),
    amount: await text(page, '#decoded-amount'),
    chain: await text(page, '#decoded-chain'),
    fee: await text(page, '#decoded-fee'),
    nonce: await text(page, '#decoded-nonce'),
    intent_hash: await text(page, '#intent-hash'),
  };
  if (!result.decoded) result.decoded = decoded;
  check(decoded.destination === DESTINATION, `${tag}-request: decoded destination ${decoded.destination}, expected ${DESTINATION}`);
  check(decoded.amount.startsWith(AMOUNT), `${tag}-request: decoded amount ${decoded.amount}, expected ${AMOUNT}`);
  check(/chain id \d+/.test(decoded.chain), `${tag}-request: chain ${decoded.chain}`);
  check(/gas limit \d+ × max fee \d+ wei/.test(decoded.fee), `${tag}-request: fee ${decoded.fee}`);
  check(decoded.nonce.length > 0, `${tag}-request: no nonce shown`);
  check(decoded.intent_hash === INTENT_HASH, `${tag}-request: intent hash ${decoded.intent_hash}, expected ${INTENT_HASH}`);
  check((await page.locator('#mismatch').count()) === 0, `${tag}-request: a mismatch alert on an untampered request`);
  check((await text(page, '#approve-command')).startsWith(`kinko ops approve ${REQUEST}`), `${tag}-request: no signing command`);
  check((await text(page, '#sign-command')).startsWith(`kinko ops sign ${REQUEST}`), `${tag}-request: no kinko ops sign command`);
  const message = await text(page, '#approval-message');
  check(/^[0-9a-f]+$/.test(message), `${tag}-request: no approval message`);
  if (tag === 'a') result.approval_message = message;
  check((await page.locator('#reasons li').count()) >= 1, `${tag}-request: the policy's reasons are not shown`);

  if (tag === 'a') {
    const cookie = (await context.cookies(base)).find((c) => c.name === '__Host-kinko-ops');
    result.cookie = cookie ? { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite } : null;
  }

  await page.selectOption('#decision', 'approve');
  await page.fill('#signature_hex', who.signature);
  r = await submit(page, `form[action="/ops/requests/${REQUEST}/decision"] button[type=submit]`);
  check(page.url() === `${base}/ops/requests/${REQUEST}`, `${tag}: after approving the page is ${page.url()}`);
  await checkPage(page, `${tag}-approved`, r, { status: 200 });
  check((await page.locator('[role=alert]').count()) === 0, `${tag}-approved: ${await text(page, '[role=alert]')}`);
  check((await text(page, 'main')).includes(`${who.id} approve`), `${tag}-approved: ${who.id}'s decision is not listed`);
  await opsLogOut(page, base, tag);
}

async function withdrawalJourney(page, context) {
  const w = {
    REQUEST: env('KINKO_OPS_REQUEST'),
    INTENT_HASH: env('KINKO_OPS_INTENT_HASH'),
    DESTINATION: env('KINKO_OPS_DESTINATION'),
    AMOUNT: env('KINKO_OPS_AMOUNT'),
  };
  const REQUEST = w.REQUEST;
  const [A, B, C] = [operator('A'), operator('B'), operator('C')];
  await approve(page, context, A, 'a', w);
  await approve(page, context, B, 'b', w);

  // The log inspector: the executed request is in the inspection view; record the inspection.
  let r = await opsLogIn(page, base, C, 'c');
  r = await page.goto(`${base}/ops/inspection`);
  await checkPage(page, 'c-inspection', r, { status: 200 });
  const link = page.locator(`main table a[href="/ops/requests/${REQUEST}"]`);
  check((await link.count()) === 1, `c-inspection: request ${REQUEST} is not in the inspection view`);
  [r] = await Promise.all([page.waitForNavigation(), link.first().click()]);
  await checkPage(page, 'c-request', r, { status: 200 });
  check((await text(page, '#request-state')) === 'executed', `c-request: state ${await text(page, '#request-state')}`);
  await page.selectOption('#finding', 'ok');
  await page.fill('#note', 'decoded transaction matched the intent');
  r = await submit(page, `form[action="/ops/requests/${REQUEST}/inspect"] button[type=submit]`);
  await checkPage(page, 'c-inspected', r, { status: 200 });
  check((await text(page, '#request-state')) === 'inspected', `c-inspected: state ${await text(page, '#request-state')}`);

  // The rest of the inspector's console: the audit trail with its verification status, the freeze button
  // (shown, not pressed: the withdrawal still has to settle), the reconciliation report.
  r = await page.goto(`${base}/ops/audit`);
  await checkPage(page, 'c-audit', r, { status: 200 });
  check((await page.locator('#audit-status').count()) === 1, 'c-audit: no verification status');
  check((await text(page, 'main')).includes('inspected'), 'c-audit: the inspection event is not listed');
  r = await page.goto(`${base}/ops/freezes`);
  await checkPage(page, 'c-freezes', r, { status: 200 });
  check((await page.locator('form[action="/ops/freezes"] button[type=submit]').count()) === 1, 'c-freezes: no freeze button');
  r = await page.goto(`${base}/ops/reconciliation`);
  await checkPage(page, 'c-reconciliation', r, { status: 200 });
}

// K8, K7: a signing operator requests a key lifecycle action (Table A-1: activation/deactivation is theirs to
// request and execute) on /ops/keys.
async function keysRequestJourney(page) {
  const KEY = env('KINKO_OPS_KEY');
  const TO_STATE = env('KINKO_OPS_TO_STATE');
  const SO = operator('SO');
  await opsLogIn(page, base, SO, 'so');
  let r = await page.goto(`${base}/ops/keys`);
  await checkPage(page, 'so-keys', r, { status: 200 });
  const row = `#keys tr[data-key-id="${KEY}"]`;
  check((await page.locator(row).count()) === 1, `so-keys: key ${KEY} is not listed`);
  result.key_state_before = await text(page, `${row} .key-state`);
  check((await page.locator('#key-roles').count()) === 1, 'so-keys: the roles of Table A-1 are not shown');
  await page.selectOption('#key_id', KEY);
  await page.selectOption('#to_state', TO_STATE);
  await page.fill('#reason', 'end of the signing window');
  r = await submit(page, 'form[action="/ops/keys"] button[type=submit]');
  await checkPage(page, 'so-requested', r, { status: 200 });
  const m = page.url().match(/\/ops\/requests\/([A-Za-z0-9_.-]+)$/);
  check(m !== null, `so-requested: the page is ${page.url()}, not a request's`);
  result.request_id = m ? m[1] : null;
  check((await text(page, '#request-state')) === 'requested', `so-requested: state ${await text(page, '#request-state')}`);
  check((await text(page, '#params')).includes(TO_STATE), `so-requested: params ${await text(page, '#params')}`);
  check((await text(page, '#sign-command')).startsWith(`kinko ops sign ${result.request_id}`), 'so-requested: no kinko ops sign command');
  await opsLogOut(page, base, 'so');
}

// The signing manager approves with the signature `kinko ops sign` printed; the signing operator executes it
// and sees the key's new state; the key access log is the log inspector's (refused to the signing operator).
async function keysApproveJourney(page) {
  const REQUEST = env('KINKO_OPS_REQUEST');
  const KEY = env('KINKO_OPS_KEY');
  const TO_STATE = env('KINKO_OPS_TO_STATE');
  const [SM, SO, LI] = [operator('SM'), operator('SO'), operator('LI')];
  const requestUrl = `${base}/ops/requests/${REQUEST}`;

  await opsLogIn(page, base, SM, 'sm');
  let r = await page.goto(requestUrl);
  await checkPage(page, 'sm-request', r, { status: 200 });
  check((await text(page, '#sign-command')).startsWith(`kinko ops sign ${REQUEST}`), 'sm-request: no kinko ops sign command');
  result.approval_message = await text(page, '#approval-message');
  check((await page.locator(`form[action="/ops/requests/${REQUEST}/execute"]`).count()) === 0, 'sm-request: execute offered before approval');
  await page.selectOption('#decision', 'approve');
  await page.fill('#signature_hex', SM.signature);
  r = await submit(page, `form[action="/ops/requests/${REQUEST}/decision"] button[type=submit]`);
  await checkPage(page, 'sm-approved', r, { status: 200 });
  check((await page.locator('[role=alert]').count()) === 0, `sm-approved: ${await text(page, '[role=alert]')}`);
  check((await text(page, '#request-state')) === 'approved', `sm-approved: state ${await text(page, '#request-state')}`);
  await opsLogOut(page, base, 'sm');

  await opsLogIn(page, base, SO, 'so2');
  r = await page.goto(requestUrl);
  await checkPage(page, 'so2-request', r, { status: 200 });
  r = await submit(page, `form[action="/ops/requests/${REQUEST}/execute"] button[type=submit]`);
  check(page.url() === requestUrl, `so2: after executing the page is ${page.url()}`);
  await checkPage(page, 'so2-executed', r, { status: 200 });
  check((await page.locator('[role=alert]').count()) === 0, `so2-executed: ${await text(page, '[role=alert]')}`);
  check((await text(page, '#request-state')) === 'executed', `so2-executed: state ${await text(page, '#request-state')}`);
  check((await text(page, '#result')).includes(TO_STATE), `so2-executed: result ${await text(page, '#result')}`);
  r = await page.goto(`${base}/ops/keys`);
  await checkPage(page, 'so2-keys', r, { status: 200 });
  result.key_state = await text(page, `#keys tr[data-key-id="${KEY}"] .key-state`);
  // Not the signing operator's: the API's refusal, as a page naming the rule (never a blank page).
  r = await page.goto(`${base}/ops/key-access-log`);
  await checkPage(page, 'so2-access-refused', r, { status: 403 });
  await run.problemShown(page, 'so2-access-refused', 'log_inspector');
  await page.goto(`${base}/ops`);
  await opsLogOut(page, base, 'so2');

  await opsLogIn(page, base, LI, 'li');
  r = await page.goto(`${base}/ops/key-access-log`);
  await checkPage(page, 'li-access-log', r, { status: 200 });
  result.access_ids = await page.locator('#key-access tr[data-access-id]').evaluateAll((rows) => rows.map((tr) => tr.getAttribute('data-access-id')));
  await opsLogOut(page, base, 'li');
}

async function main() {
  const { context, page, close } = await launchChromium(CHROMIUM);
  try {
    run.watchCsp(page);
    if (JOURNEY === 'withdrawal') await withdrawalJourney(page, context);
    else if (JOURNEY === 'keys-request') await keysRequestJourney(page);
    else if (JOURNEY === 'keys-approve') await keysApproveJourney(page);
    else run.fail(`unknown KINKO_OPS_JOURNEY ${JOURNEY}`);
    run.checkNoCspViolations();
  } finally {
    await close();
  }
}

run.main(main);
