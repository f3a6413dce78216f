// Evaluates AWS requests against IAM policies with @cloud-copilot/iam-simulate: identity
// policies with their conditions, and a permissions boundary when the principal has one.
//
// A line protocol on stdin/stdout (one JSON object a line, one answer a line), so the
// emulator adapter keeps one evaluator for a whole test run:
//   {"op": "policies", "key": K, "identity": [{name, policy}], "boundary": policy|null}
//       -> {"ok": true}: the policies of principal K (a function of one stack, say)
//   {"op": "check", "key": K, "principal": ARN, "action": "dynamodb:GetItem",
//    "resource": ARN or "*", "account": "123456789012", "context": {"dynamodb:LeadingKeys": [...]},
//    "identity": [...] (instead of K's, for another principal), "resourcePolicy": {...} (the resource's)}
//       -> {"allowed": true|false, "decision": "Allowed"|"ImplicitlyDenied"|"ExplicitlyDenied",
//           "by": "Policy#Sid" or "", "why": "...", "ignoredContextKeys": [...]}
// A request the simulator refuses as malformed (an unknown action, a resource of the wrong
// type) is an answer with "error", never a silent allow.
'use strict';
const readline = require('node:readline');
const { runSimulation, getDenialReasons, getGrantReasons } = require('@cloud-copilot/iam-simulate');

const principals = new Map();

function statementName(reason) {
  if (!reason) return '';
  const statement = reason.statementId || (reason.statementIndex !== undefined ? `statement ${reason.statementIndex}` : '');
  return `${reason.policyIdentifier || reason.policyType || ''}${statement ? '#' + statement : ''}`;
}

async function check(request) {
  const known = principals.get(request.key);
  if (!known) return { error: `no policies for ${request.key}` };
  const simulation = {
    request: {
      principal: request.principal,
      action: request.action,
      resource: { resource: request.resource, accountId: request.account },
      contextVariables: request.context || {},
    },
    identityPolicies: request.identity || known.identity,
    resourcePolicy: request.resourcePolicy || undefined,
    permissionBoundaryPolicies: known.boundary ? [{ name: 'RoleBoundary', policy: known.boundary }] : undefined,
    serviceControlPolicies: [],
    resourceControlPolicies: [],
  };
  const result = await runSimulation(simulation, {});
  if (result.resultType === 'error') return { error: JSON.stringify(result.errors) };
  const analysis = result.resultType === 'single' ? result.result.analysis : (result.results || [])[0]?.analysis;
  const allowed = result.overallResult === 'Allowed';
  const ignored = (result.resultType === 'single' ? result.result.ignoredContextKeys : []) || [];
  if (!analysis) return { allowed, decision: result.overallResult, by: '', why: 'no analysis', ignoredContextKeys: ignored };
  const reasons = allowed ? getGrantReasons(analysis) : getDenialReasons(analysis);
  const first = reasons[0];
  let why = '';
  if (!allowed) {
    why = first && first.denialType === 'Explicit'
      ? `explicitly denied by ${statementName(first)}`
      : first && first.policyType === 'pb'
        ? 'the permissions boundary allows no such request'
        : 'no statement of the identity policies allows it';
  }
  return { allowed, decision: result.overallResult, by: allowed ? statementName(first) : statementName(first), why, ignoredContextKeys: ignored };
}

async function handle(line) {
  const message = JSON.parse(line);
  if (message.op === 'policies') {
    principals.set(message.key, { identity: message.identity, boundary: message.boundary || null });
    return { ok: true };
  }
  if (message.op === 'check') return check(message);
  return { error: `unknown op ${message.op}` };
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  // Answers go out in the order requests came in.
  queue = queue.then(async () => {
    let answer;
    try {
      answer = await handle(line);
    } catch (error) {
      answer = { error: String(error && error.stack || error) };
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  });
});
