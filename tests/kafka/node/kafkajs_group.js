#!/usr/bin/env node
// A kafkajs 2.2.4 consumer group through Spate's group coordinator.
//
// Checks: a 4-partition topic pre-filled with sequenced records (value "p<partition>-<seq>");
// two consumers of one group in this process (kafkajs' round-robin assigner, autoCommit after
// each batch) end up with 2 partitions each (GROUP_JOIN events), then more records are produced
// and each member consumes its share; between them they consume every record; while they run
// admin.describeGroups shows the group Stable with both members; admin.fetchOffsets shows the
// committed offsets at the end of every partition; after both disconnect (LeaveGroup) the group
// is Empty and keeps its offsets.
//
// Env: SPATE_KAFKA=host:port (required), SPATE_TOPIC (optional topic name).
'use strict';

const {
  fail, ok, startBudget, remaining, withTimeout, sleep, bootstrapFromEnv, kafkajsVersion, clientLogs,
  makeKafka,
} = require('./common');

startBudget(70000);
const PARTITIONS = 4;
const PREFILL = 50;
const MORE = 25;

async function waitFor(what, capMs, pred, describe) {
  const end = Date.now() + remaining(capMs);
  while (!pred()) {
    if (Date.now() > end) fail(`${what}: not reached in ${capMs} ms: ${describe()}`);
    await sleep(50);
  }
}

const bootstrap = bootstrapFromEnv();
const stamp = `${process.pid}-${Date.now()}`;
const topic = process.env.SPATE_TOPIC || `kafkajs-group-${stamp}`;
const groupId = process.env.SPATE_TOPIC ? `${topic}-group-${stamp}` : `${topic}-group`;
console.log(`kafkajs ${kafkajsVersion}, node ${process.version}, bootstrap ${bootstrap}, topic ${topic}, group ${groupId}`);

const kafka = makeKafka({ clientId: 'spate-kafkajs-group', brokers: [bootstrap], retries: 5 });

const ends = Array(PARTITIONS).fill(0);
async function produce(producer, perPartition) {
  const messages = [];
  for (let i = 0; i < perPartition; i++) {
    for (let p = 0; p < PARTITIONS; p++) {
      messages.push({ partition: p, key: `k${p}-${ends[p] % 3}`, value: `p${p}-${ends[p]}` });
      ends[p] += 1;
    }
  }
  await withTimeout(producer.send({ topic, messages, acks: -1 }), remaining(15000), 'producer.send')
    .catch((e) => fail(`send failed: ${e.stack || e}`));
}

async function main() {
  const admin = kafka.admin();
  await withTimeout(admin.connect(), remaining(10000), 'admin.connect');
  await withTimeout(admin.createTopics({
    topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 1 }], waitForLeaders: true, timeout: 10000,
  }), remaining(20000), 'createTopics').catch((e) => fail(`createTopics failed: ${e.stack || e}`));
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await withTimeout(producer.connect(), remaining(10000), 'producer.connect');
  await produce(producer, PREFILL);
  ok(`created ${topic} (${PARTITIONS} partitions) and produced ${PREFILL} records per partition`);

  const seen = new Map(); // "p/o" -> [member]
  const members = ['m1', 'm2'].map((name) => {
    const consumer = kafka.consumer({
      groupId,
      sessionTimeout: 10000,
      rebalanceTimeout: 10000,
      heartbeatInterval: 500,
      maxWaitTimeInMs: 200,
      retry: { retries: 5 },
    });
    const member = { name, consumer, assigned: [], joins: 0, crashed: null, sinceJoin: 0 };
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      // A join may repeat the current generation (kafkajs rejoins after a retried heartbeat
      // error even when the rebalance it heard of is over): counts run from the reset below.
      member.assigned = (e.payload.memberAssignment[topic] || []).slice().sort();
      member.joins += 1;
    });
    consumer.on(consumer.events.CRASH, (e) => {
      const what = `${e.payload.error && (e.payload.error.stack || e.payload.error)} (restart: ${e.payload.restart})`;
      process.stderr.write(`${name} crashed: ${what}\n`);
      if (!e.payload.restart) member.crashed = member.crashed || what;
    });
    return member;
  });
  const describe = () => JSON.stringify(members.map((m) => ({
    name: m.name, assigned: m.assigned, joins: m.joins, crashed: m.crashed, sinceJoin: m.sinceJoin,
  }))) + ` seen ${seen.size}`;

  const t0 = Date.now();
  for (const m of members) {
    await withTimeout(m.consumer.connect(), remaining(10000), `${m.name}.connect`);
    await m.consumer.subscribe({ topics: [topic], fromBeginning: true });
    // kafkajs' own commit path: autoCommit resolves each batch and commits after it (and, on
    // learning of a rebalance from a heartbeat, commits before rejoining).
    await m.consumer.run({
      autoCommit: true,
      eachBatch: async ({ batch }) => {
        if (batch.messages.length === 0) return;
        for (const msg of batch.messages) {
          const where = `${batch.partition}/${msg.offset}`;
          const want = `p${batch.partition}-${msg.offset}`;
          if (String(msg.value) !== want) m.crashed = m.crashed || `${where}: value ${msg.value} != ${want}`;
          if (!seen.has(where)) seen.set(where, []);
          seen.get(where).push(m.name);
          m.sinceJoin += 1;
        }
      },
    });
  }
  const total = () => ends.reduce((a, b) => a + b, 0);
  const allSeen = () => {
    for (let p = 0; p < PARTITIONS; p++) for (let o = 0; o < ends[p]; o++) if (!seen.has(`${p}/${o}`)) return false;
    return true;
  };
  const balanced = () => members.every((m) => m.assigned.length === 2)
    && JSON.stringify(members.flatMap((m) => m.assigned).sort()) === JSON.stringify([0, 1, 2, 3]);
  await waitFor('two members with 2 partitions each', 30000,
    () => { if (members.some((m) => m.crashed)) fail(describe()); return balanced(); }, describe);
  ok(`both members joined: ${members.map((m) => `${m.name} owns [${m.assigned}]`).join(', ')} ` +
    `(${Date.now() - t0} ms)`);
  console.log(`rebalance_ms=${Date.now() - t0} (first member connecting -> both members assigned)`);

  // Counts start before producing: members may read the new records before produce() returns.
  members.forEach((m) => { m.sinceJoin = 0; });
  await produce(producer, MORE);
  await waitFor('every record consumed', 20000, () => {
    if (members.some((m) => m.crashed)) fail(describe());
    return allSeen() && members.every((m) => m.sinceJoin >= MORE * 2);
  }, describe);
  if (!balanced()) fail(`assignment changed while consuming: ${describe()}`);
  let dups = 0;
  for (const v of seen.values()) dups += v.length - 1;
  ok(`the group consumed all ${total()} records (${dups} twice across the rebalance); after ` +
    `producing more, each member consumed its share: ${members.map((m) => `${m.name} ${m.sinceJoin}`).join(', ')}`);

  const described = await withTimeout(admin.describeGroups([groupId]), remaining(15000), 'describeGroups')
    .catch((e) => fail(`describeGroups failed: ${e.stack || e}`));
  const group = described.groups[0];
  if (!group || group.errorCode !== 0 || group.state !== 'Stable' || group.members.length !== 2
    || group.protocolType !== 'consumer') {
    fail(`describeGroups: ${JSON.stringify(group && { ...group, members: group.members.map((x) => x.memberId) })}`);
  }
  ok(`describeGroups: ${group.state}, protocol ${group.protocol}, ${group.members.length} members`);

  const committed = async () => {
    const res = await withTimeout(admin.fetchOffsets({ groupId, topics: [topic] }), remaining(15000), 'fetchOffsets');
    const parts = res.find((t) => t.topic === topic).partitions;
    return Array.from({ length: PARTITIONS }, (_, p) => Number((parts.find((x) => x.partition === p) || {}).offset));
  };
  // The last commits may still be in flight when the last record was seen.
  let got = await committed();
  const commitEnd = Date.now() + remaining(10000);
  while (JSON.stringify(got) !== JSON.stringify(ends) && Date.now() < commitEnd) {
    await sleep(200);
    got = await committed();
  }
  if (JSON.stringify(got) !== JSON.stringify(ends)) fail(`fetchOffsets: committed ${got}, expected the ends ${ends}`);
  ok(`fetchOffsets: committed offsets ${got} are the partition ends`);

  for (const m of members) {
    await withTimeout(m.consumer.disconnect(), remaining(15000), `${m.name}.disconnect`)
      .catch((e) => fail(`${m.name}.disconnect failed: ${e.stack || e}`));
  }
  const after = (await admin.describeGroups([groupId])).groups[0];
  if (after.state !== 'Empty' || after.members.length !== 0) {
    fail(`after both members disconnected describeGroups says ${after.state} with ${after.members.length} members`);
  }
  got = await committed();
  if (JSON.stringify(got) !== JSON.stringify(ends)) fail(`after disconnect fetchOffsets: ${got}, expected ${ends}`);
  ok(`after both disconnected the group is Empty and keeps its offsets ${got}`);

  await producer.disconnect();
  await admin.deleteTopics({ topics: [topic], timeout: 10000 }).catch(() => {});
  await admin.disconnect();
  console.log('PASS kafkajs_group');
  process.exit(0);
}

main().catch((e) => fail(`${e.stack || e}\nclient log:\n${clientLogs.slice(-30).join('\n')}`));
