'use strict';
// Runs against a real server: SJFF_TARGET, SJFF_TOKEN, SJFF_IDX_IMAGES and SJFF_EXPECTED (a JSON
// file with the in-process labels and scores of the first images) are set by
// tests/test_clients_node.py, which starts the server.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const { SjffClient } = require('../index');
const { readIdx } = require('../cli');

const target = process.env.SJFF_TARGET;
const skip = target ? false : 'SJFF_TARGET not set (run through tests/test_clients_node.py)';
const expected = target ? JSON.parse(fs.readFileSync(process.env.SJFF_EXPECTED)) : null;

test('health and metadata', { skip }, async () => {
  const c = new SjffClient(target);
  try {
    assert.strictEqual(await c.serverLive(), true);
    assert.strictEqual(await c.serverReady(), true);
    assert.strictEqual(await c.modelReady(), true);
    const md = await c.modelMetadata();
    assert.strictEqual(md.inputs[0].name, 'images');
    assert.deepStrictEqual(md.outputs.map((o) => o.name).includes('scores'), true);
  } finally { c.close(); }
});

test('infer matches the in-process model', { skip }, async () => {
  const c = new SjffClient(target);
  try {
    const n = expected.labels.length;
    const { images } = readIdx(process.env.SJFF_IDX_IMAGES, 0, n);
    const r = await c.infer(images, n);
    assert.deepStrictEqual(r.label, expected.labels);
    r.scores.forEach((row, i) => row.forEach((v, j) => assert.ok(Math.abs(v - expected.scores[i][j]) < 1e-4)));
    const typed = await c.infer(images, n, { typed: true });
    assert.deepStrictEqual(typed.label, expected.labels);
    const streamed = await c.inferStream([{ images: images.subarray(0, 784), n: 1 }, { images, n }]);
    assert.deepStrictEqual(streamed[0].label, [expected.labels[0]]);
    assert.deepStrictEqual(streamed[1].label, expected.labels);
  } finally { c.close(); }
});

test('bad requests get INVALID_ARGUMENT and NOT_FOUND', { skip }, async () => {
  const c = new SjffClient(target);
  try {
    await assert.rejects(c.infer(new Float32Array(10), 1), (e) => e.code === grpc.status.INVALID_ARGUMENT);
    await assert.rejects(c.infer(new Uint8Array(784), 1, { model: 'nope' }), (e) => e.code === grpc.status.NOT_FOUND);
  } finally { c.close(); }
});

test('learning needs the token and increments the version', { skip }, async () => {
  const { images } = readIdx(process.env.SJFF_IDX_IMAGES, 0, 1);
  const anon = new SjffClient(target, { token: 'x'.repeat(20) });
  try {
    await assert.rejects(anon.learn(images, [expected.labels[0]]), (e) => e.code === grpc.status.UNAUTHENTICATED);
  } finally { anon.close(); }
  const c = new SjffClient(target, { token: process.env.SJFF_TOKEN });
  try {
    const before = (await c.listVersions()).current_version;
    const r = await c.learn(images, [expected.labels[0]], { seed: 3 });
    assert.strictEqual(r.version, Number(before) + 1);
    assert.strictEqual(r.logOdds.length, 1);
    assert.match(r.requestId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const mine = await c.learn(images, [expected.labels[0]], { requestId: 'node-key' });
    assert.strictEqual(mine.requestId, 'node-key');
    const after = await c.infer(images, 1, { minVersion: mine.version });
    assert.strictEqual(after.version, mine.version);
    const stats = await c.stats('mnist');
    assert.strictEqual(Number(stats[0].learning_version), mine.version);
  } finally { c.close(); }
});
