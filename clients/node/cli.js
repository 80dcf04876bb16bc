#!/usr/bin/env node
'use strict';
/**
 * sjff-client (Node.js):
 *   node cli.js infer --idx t10k-images-idx3-ubyte --index 0 [--count 3] [--target host:port]
 *   node cli.js learn --idx t10k-images-idx3-ubyte --index 0 --label 7 [--request-id ID]  (token: $SJFF_TOKEN)
 *   node cli.js infer ... --min-version V      (answer from learning version V or later)
 *   node cli.js stats | health
 */
const fs = require('node:fs');
const zlib = require('node:zlib');
const { SjffClient } = require('./index');

function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) args[argv[i].slice(2)] = argv[i + 1] !== undefined && !argv[i + 1].startsWith('--') ? argv[++i] : true;
    else args._.push(argv[i]);
  }
  return args;
}

/** Rows index..index+count of an IDX image file (optionally gzipped) as one Uint8Array. */
function readIdx(file, index, count) {
  let buf = fs.readFileSync(file);
  if (buf[0] === 0x1f && buf[1] === 0x8b) buf = zlib.gunzipSync(buf);
  if (buf[0] !== 0 || buf[1] !== 0 || buf[2] !== 0x08) throw new Error(`${file}: not a uint8 IDX file`);
  const ndim = buf[3];
  const dims = [];
  for (let i = 0; i < ndim; i++) dims.push(buf.readUInt32BE(4 + 4 * i));
  const per = dims.slice(1).reduce((a, b) => a * b, 1);
  const start = 4 + 4 * ndim + index * per;
  return { images: new Uint8Array(buf.subarray(start, start + count * per)), n: count, labels: ndim === 1 };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const cmd = args._[0];
  const client = new SjffClient(args.target || process.env.SJFF_TARGET || 'localhost:8001', { model: args.model, rootCa: args.ca, clientCert: args.cert, clientKey: args.key });
  try {
    if (cmd === 'infer') {
      const { images, n } = readIdx(args.idx, Number(args.index || 0), Number(args.count || 1));
      const r = await client.infer(images, n, { minVersion: args['min-version'] !== undefined ? Number(args['min-version']) : undefined });
      console.log(JSON.stringify({ label: r.label, version: r.version, model: `${r.modelName}/${r.modelVersion}` }));
    } else if (cmd === 'learn') {
      const { images, n } = readIdx(args.idx, Number(args.index || 0), 1);
      const r = await client.learn(images, Array(n).fill(Number(args.label)), { requestId: args['request-id'] });
      console.log(JSON.stringify(r));
    } else if (cmd === 'stats') {
      console.log(JSON.stringify(await client.stats()));
    } else if (cmd === 'health') {
      console.log(JSON.stringify({ live: await client.serverLive(), ready: await client.serverReady() }));
    } else {
      console.error('usage: cli.js infer|learn|stats|health [--target host:port] [--idx FILE --index I --count N --label L]');
      process.exitCode = 2;
    }
  } catch (err) {
    console.error(`sjff-client: ${err.code !== undefined ? `code ${err.code}: ` : ''}${err.details || err.message}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

if (require.main === module) main();
module.exports = { readIdx };
