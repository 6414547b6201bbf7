// Helpers shared by the kafkajs scripts in tests/kafka/node.
//
// Offers: fail (exit 1) and ok for reporting; startBudget(ms), which also sets a hard timeout
// 5 s after the budget, and remaining(capMs), the time left at most capMs; withTimeout(promise,
// ms, what) and sleep(ms); bootstrapFromEnv() (SPATE_KAFKA, required); kafkajsVersion; and
// makeKafka({ clientId, brokers, retries }), a kafkajs client logging warnings to stderr and to
// clientLogs (for the report when something fails).
'use strict';

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, logLevel } = require('kafkajs');

function fail(msg) {
  process.stderr.write(`FAIL: ${msg}\n`);
  process.exit(1);
}
function ok(msg) {
  process.stdout.write(`ok: ${msg}\n`);
}

const budget = { started: Date.now(), ms: Infinity };
function startBudget(ms) {
  budget.started = Date.now();
  budget.ms = ms;
  setTimeout(() => fail(`hard timeout: the script ran for ${ms / 1000 + 5} s`), ms + 5000).unref();
}
function remaining(capMs) {
  const left = budget.ms - (Date.now() - budget.started);
  if (left <= 0) fail(`ran out of time (${budget.ms / 1000} s budget)`);
  return Math.min(capMs, left);
}
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function bootstrapFromEnv() {
  return process.env.SPATE_KAFKA || fail('set SPATE_KAFKA=host:port');
}
const kafkajsVersion = require('kafkajs/package.json').version;

const clientLogs = [];
function makeKafka({ clientId, brokers, retries }) {
  return new Kafka({
    clientId,
    brokers,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries, initialRetryTime: 200, maxRetryTime: 2000 },
    logLevel: logLevel.WARN,
    logCreator: () => ({ namespace, log }) => {
      const line = `[kafkajs ${namespace}] ${log.message} ${JSON.stringify(
        Object.fromEntries(Object.entries(log).filter(([k]) => !['message', 'timestamp', 'logger'].includes(k))))}`;
      clientLogs.push(line);
      process.stderr.write(`${line}\n`);
    },
  });
}

module.exports = {
  fail, ok, startBudget, remaining, withTimeout, sleep, bootstrapFromEnv, kafkajsVersion, clientLogs,
  makeKafka,
};
