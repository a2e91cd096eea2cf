// The operator console in Chromium (issue #8; K8, M10, M1): two signing managers approve a large withdrawal
// after reading the transaction decoded from the payload, and a log inspector sees it executed and inspects it.
// Run by crates/kinko/tests/web_ops.rs, which sets up kinko, the operators and the pending withdrawal and
// computes each approver's signature over the approval message as their terminal would.
//
// usage: node tests/browser/operator_console.mjs <base-url> <artifacts-dir>   (environment: see below)

import { createRun, env, launchChromium, submit, totp, totpStep } from './lib.mjs';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node tests/browser/operator_console.mjs <base-url> <artifacts-dir>');
  process.exit(2);
}
const CHROMIUM = env('KINKO_CHROMIUM', '/usr/bin/chromium');
const REQUEST = env('KINKO_OPS_REQUEST');
const INTENT_HASH = env('KINKO_OPS_INTENT_HASH');
const DESTINATION = env('KINKO_OPS_DESTINATION');
const AMOUNT = env('KINKO_OPS_AMOUNT');
const operator = (x) => ({
  id: env(`KINKO_OPS_${x}_ID`),
  password: env(`KINKO_OPS_${x}_PASSWORD`),
  totp: env(`KINKO_OPS_${x}_TOTP`),
  signature: process.env[`KINKO_OPS_${x}_SIGNATURE`],
});
const A = operator('A');
const B = operator('B');
const C = operator('C');
const OVERALL_TIMEOUT_MS = 240_000;

const run = createRun({
  tag: 'ops',
  artifacts,
  fields: { cookie: null, decoded: null },
  timeoutMs: OVERALL_TIMEOUT_MS,
});
const { result, check, checkPage } = run;

const text = async (page, selector) => ((await page.locator(selector).first().textContent().catch(() => null)) || '').trim();

// Password + TOTP on /ops/login; lands on the approval queue.
async function logIn(page, who, tag) {
  let r = await page.goto(`${base}/ops/login`);
  await checkPage(page, `${tag}-login`, r, { status: 200 });
  await page.fill('#operator_id', who.id);
  await page.fill('#password', who.password);
  await page.fill('#totp_code', totp(who.totp, totpStep()));
  r = await submit(page, 'form[action="/ops/login"] button[type=submit]');
  check(page.url() === `${base}/ops`, `${tag}: after log-in the page is ${page.url()}`);
  return r;
}

async function logOut(page, tag) {
  await submit(page, 'form[action="/ops/logout"] button[type=submit]');
  check(page.url() === `${base}/ops/login`, `${tag}: after log-out the page is ${page.url()}`);
}

// Queue → the request → the decoded transaction → paste the signature → approve.
async function approve(page, context, who, tag) {
  let r = await logIn(page, who, tag);
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
  check(/^[0-9a-f]+$/.test(await text(page, '#approval-message')), `${tag}-request: no approval message`);
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
  await logOut(page, tag);
}

async function main() {
  const { context, page, close } = await launchChromium(CHROMIUM);
  try {
    run.watchCsp(page);
    await approve(page, context, A, 'a');
    await approve(page, context, B, 'b');

    // The log inspector: the executed request is in the inspection view; record the inspection.
    let r = await logIn(page, C, 'c');
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

    run.checkNoCspViolations();
  } finally {
    await close();
  }
}

run.main(main);
