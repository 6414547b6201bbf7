#!/usr/bin/env node
// Round trip through Spate's Kafka listener with kafkajs 2.2.4 (pure JavaScript).
//
// Checks: admin.createTopics (3 partitions, waits for leaders); producer.send in several batches
// (keys, headers, explicit timestamps; gzip and uncompressed; an idempotent producer too) with
// dense offsets in every partition; admin.fetchTopicOffsets high watermarks summing to N.
// Then a group consumer (SPATE_KAFKAJS_CONSUMER=0 turns it off) reading every
// record back and comparing. Finally admin.deleteTopics.
//
// Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (optional), SPATE_KAFKAJS_CONSUMER=0.
'use strict';

const {
  fail, ok, startBudget, remaining, withTimeout, sleep, bootstrapFromEnv, kafkajsVersion, clientLogs,
  makeKafka,
} = require('./common');
const { CompressionTypes, Partitioners } = require('kafkajs');

const started = Date.now();
startBudget(55000);
const PARTITIONS = 3;
const BATCHES = 8;
const PER_BATCH = 75;
const N = BATCHES * PER_BATCH;

const bootstrap = bootstrapFromEnv();
const topic = process.env.SPATE_TOPIC || `kafkajs-${process.pid}-${Date.now()}`;
const withConsumer = process.env.SPATE_KAFKAJS_CONSUMER !== '0';
console.log(`kafkajs ${kafkajsVersion}, node ${process.version}, bootstrap ${bootstrap}, topic ${topic}, ` +
  `consumer ${withConsumer ? 'on' : 'off'}`);

const kafka = makeKafka({ clientId: 'spate-kafkajs', brokers: [bootstrap], retries: 3 });

function makeRecord(i) {
  let key = Buffer.from(`kj-key-${i}`);
  let value = Buffer.concat([Buffer.from(`kj-value-${i}-`), Buffer.alloc(i % 250, 'j')]);
  const headers = { seq: Buffer.from(String(i)), origin: Buffer.from('kafkajs') };
  if (i % 41 === 3) {
    key = Buffer.concat([Buffer.from([0, 255, 10, 13]), key]);
    value = Buffer.from(Array.from({ length: 256 }, (_, b) => b));
    headers.bin = Buffer.from([0, 1, 254, 255]);
  }
  if (i % 41 === 4) value = null;
  if (i % 41 === 5) value = Buffer.alloc(0);
  return { key, value, headers, timestamp: String(started - 600000 + i) };
}

async function main() {
  const admin = kafka.admin();
  await withTimeout(admin.connect(), remaining(10000), 'admin.connect');
  const created = await withTimeout(admin.createTopics({
    topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 1 }],
    waitForLeaders: true,
    timeout: 10000,
  }), remaining(20000), 'admin.createTopics').catch((e) => fail(`createTopics failed: ${e.stack || e}`));
  if (created !== true) fail(`createTopics returned ${created} (false means the topic existed)`);
  ok(`createTopics ${topic} with ${PARTITIONS} partitions`);
  const meta = await withTimeout(admin.fetchTopicMetadata({ topics: [topic] }), remaining(10000),
    'admin.fetchTopicMetadata');
  const parts = meta.topics[0].partitions;
  if (parts.length !== PARTITIONS || parts.some((p) => p.leader < 0 || p.partitionErrorCode !== 0)) {
    fail(`fetchTopicMetadata: ${JSON.stringify(parts)}`);
  }
  ok(`fetchTopicMetadata: ${PARTITIONS} partitions with leaders`);

  // Produce: half the batches with a plain producer (gzip and none), half idempotent.
  const plain = kafka.producer({ allowAutoTopicCreation: false });
  const idempotent = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  await withTimeout(plain.connect(), remaining(10000), 'producer.connect');
  await withTimeout(idempotent.connect(), remaining(10000), 'producer.connect (idempotent)');
  // The default partitioner is deterministic on the key: recompute which records went where.
  const partitioner = Partitioners.DefaultPartitioner();
  const partitionMetadata = parts.map((x) => ({ partitionId: x.partitionId, leader: x.leader }));
  const expected = new Map(); // "partition/offset" -> record
  const counts = Array(PARTITIONS).fill(0);
  for (let b = 0; b < BATCHES; b++) {
    const records = Array.from({ length: PER_BATCH }, (_, j) => makeRecord(b * PER_BATCH + j));
    const producer = b % 2 === 0 ? plain : idempotent;
    const compression = b % 4 < 2 ? CompressionTypes.GZIP : CompressionTypes.None;
    let result;
    try {
      result = await withTimeout(producer.send({ topic, messages: records, acks: -1, compression }),
        remaining(15000), `producer.send batch ${b}`);
    } catch (e) {
      fail(`send batch ${b} (${b % 2 ? 'idempotent' : 'plain'}, compression ${compression}) failed: ${e.stack || e}`);
    }
    // kafkajs groups messages by partition in one request, in order; result has one entry per
    // partition with the base offset.
    const byPartition = new Map();
    for (const r of records) {
      const p = partitioner({ topic, partitionMetadata, message: r });
      if (!byPartition.has(p)) byPartition.set(p, []);
      byPartition.get(p).push(r);
    }
    for (const meta of result) {
      if (meta.errorCode !== 0) fail(`batch ${b}: partition ${meta.partition} error ${meta.errorCode}`);
      const sent = byPartition.get(meta.partition) || [];
      const base = Number(meta.baseOffset);
      if (base !== counts[meta.partition]) {
        fail(`batch ${b}: partition ${meta.partition} base offset ${base}, expected ${counts[meta.partition]}`);
      }
      sent.forEach((r, k) => expected.set(`${meta.partition}/${base + k}`, r));
      counts[meta.partition] += sent.length;
    }
    const answered = result.map((m) => m.partition).sort();
    const used = [...byPartition.keys()].sort();
    if (JSON.stringify(answered) !== JSON.stringify(used)) {
      fail(`batch ${b}: answers for partitions ${answered}, records went to ${used}`);
    }
  }
  if (expected.size !== N) fail(`${expected.size} records acknowledged, sent ${N}`);
  if (counts.some((c) => c === 0)) fail(`keys did not spread over every partition: ${counts}`);
  ok(`${BATCHES} batches of ${PER_BATCH} sent (acks=-1, gzip/none, plain/idempotent); per partition ${counts}`);
  await plain.disconnect();
  await idempotent.disconnect();

  const offsets = await withTimeout(admin.fetchTopicOffsets(topic), remaining(10000), 'fetchTopicOffsets');
  let sum = 0;
  for (const o of offsets) {
    const high = Number(o.high);
    sum += high;
    if (Number(o.low) !== 0 || high !== counts[o.partition]) {
      fail(`fetchTopicOffsets partition ${o.partition}: low ${o.low} high ${o.high}, expected 0/${counts[o.partition]}`);
    }
  }
  if (offsets.length !== PARTITIONS || sum !== N) fail(`high watermarks sum to ${sum} over ${offsets.length} partitions, expected ${N}`);
  ok(`fetchTopicOffsets: high watermarks ${offsets.map((o) => o.high)} sum to ${N}`);

  if (withConsumer) await consume(expected);

  await withTimeout(admin.deleteTopics({ topics: [topic], timeout: 10000 }), remaining(15000), 'deleteTopics')
    .catch((e) => fail(`deleteTopics failed: ${e.stack || e}`));
  const stop = Date.now() + 5000;
  while ((await admin.listTopics()).includes(topic)) {
    if (Date.now() > stop) fail(`${topic} still listed 5 s after deleteTopics`);
    await sleep(200);
  }
  ok(`deleteTopics removed ${topic}`);
  await admin.disconnect();
  console.log('PASS kafkajs_roundtrip');
  process.exit(0);
}

function sameBuffer(a, b) {
  if (a === null || b === null) return a === b;
  return Buffer.compare(a, b) === 0;
}

async function consume(expected) {
  const consumer = kafka.consumer({
    groupId: `${topic}-group`,
    sessionTimeout: 10000,
    rebalanceTimeout: 10000,
    heartbeatInterval: 1000,
    maxWaitTimeInMs: 200,
    retry: { retries: 2 },
  });
  await withTimeout(consumer.connect(), remaining(10000), 'consumer.connect');
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const seen = new Set();
  let problem = null;
  let done;
  const finished = new Promise((resolve) => { done = resolve; });
  consumer.on(consumer.events.CRASH, (e) => { problem = `consumer crashed: ${e.payload.error}`; done(); });
  await consumer.run({
    autoCommit: true,
    eachMessage: async ({ partition, message }) => {
      const where = `${partition}/${message.offset}`;
      const want = expected.get(where);
      if (!want) problem = problem || `unexpected record at ${where}`;
      else if (!sameBuffer(message.key, want.key)) problem = problem || `${where}: key ${message.key} != ${want.key}`;
      else if (!sameBuffer(message.value, want.value)) problem = problem || `${where}: value differs`;
      else if (message.timestamp !== want.timestamp) problem = problem || `${where}: timestamp ${message.timestamp} != ${want.timestamp}`;
      else {
        const got = Object.keys(message.headers || {}).sort();
        const wantKeys = Object.keys(want.headers).sort();
        if (JSON.stringify(got) !== JSON.stringify(wantKeys)
          || wantKeys.some((k) => !sameBuffer(message.headers[k], want.headers[k]))) {
          problem = problem || `${where}: headers differ`;
        }
      }
      seen.add(where);
      if (problem || seen.size === expected.size) done();
    },
  });
  await withTimeout(finished, remaining(30000), `consumer (read ${seen.size} of ${expected.size})`)
    .catch((e) => { problem = problem || String(e); });
  await consumer.disconnect().catch(() => {});
  if (problem) fail(problem);
  ok(`group consumer read all ${seen.size} records back: keys, values, headers, timestamps`);
}

main().catch((e) => fail(`${e.stack || e}\nclient log:\n${clientLogs.join('\n')}`));
