'use strict';
/**
 * Node.js client of the spikingjelly-ff server, generated at load time from the same .proto
 * files as the Python stubs with @grpc/proto-loader. The package ships them (./protos, copied by
 * `npm pack`); in a checkout of the repository they are always read from its protos/.
 *
 *   const { SjffClient } = require('sjff-client');
 *   const c = new SjffClient('localhost:8001', { token: process.env.SJFF_TOKEN });
 *   const r = await c.infer(uint8Images, 1);        // r.label [N], r.scores [N][C], r.version
 *   const u = await c.learn(uint8Images, [7]);      // u.version (durable), u.logOdds
 */
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = ['inference/grpc_service.proto', 'spikingjelly_ff/v1/learning.proto'];

/**
 * $SJFF_PROTO_ROOT; else, in a checkout (this directory is the repository's clients/node), the
 * repository's protos/, so that a copy left in ./protos by an interrupted `npm pack` can never
 * hide an edit of them; else the package's own copy. An installed package sits in
 * node_modules/, never in clients/: a protos/ folder two levels above it is not read.
 */
function protoRoot() {
  if (process.env.SJFF_PROTO_ROOT) return process.env.SJFF_PROTO_ROOT;
  const repoProtos = path.join(__dirname, '..', '..', 'protos');
  const inCheckout = path.basename(path.dirname(__dirname)) === 'clients'
    && fs.existsSync(path.join(repoProtos, PROTOS[0]));
  return inCheckout ? repoProtos : path.join(__dirname, 'protos');
}

const PROTO_ROOT = protoRoot();

const DTYPES = {
  FP32: { bytes: 4, read: (b, o) => b.readFloatLE(o) },
  FP64: { bytes: 8, read: (b, o) => b.readDoubleLE(o) },
  INT64: { bytes: 8, read: (b, o) => Number(b.readBigInt64LE(o)) },
  INT32: { bytes: 4, read: (b, o) => b.readInt32LE(o) },
  UINT8: { bytes: 1, read: (b, o) => b.readUInt8(o) },
};

function loadServices(protoRoot = PROTO_ROOT) {
  const def = protoLoader.loadSync(PROTOS, {
    includeDirs: [protoRoot],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def);
  return { Inference: pkg.inference.GRPCInferenceService, Learning: pkg.spikingjelly_ff.v1.Learning };
}

/** Decode one output tensor (raw little-endian bytes or typed contents) into nested arrays. */
function decodeTensor(meta, raw) {
  const shape = meta.shape.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  let flat;
  if (raw !== undefined) {
    const t = DTYPES[meta.datatype];
    if (!t) throw new Error(`unsupported output datatype ${meta.datatype}`);
    flat = new Array(count);
    for (let i = 0; i < count; i++) flat[i] = t.read(raw, i * t.bytes);
  } else {
    const c = meta.contents || {};
    flat = (c.fp32_contents && c.fp32_contents.length ? c.fp32_contents
      : c.int64_contents && c.int64_contents.length ? c.int64_contents.map(Number)
        : c.fp64_contents || []).slice(0, count);
  }
  if (shape.length <= 1) return flat;
  const inner = shape.slice(1).reduce((a, b) => a * b, 1);
  const rows = [];
  for (let i = 0; i < shape[0]; i++) rows.push(flat.slice(i * inner, (i + 1) * inner));
  return rows;
}

function parseInferResponse(resp) {
  const outputs = {};
  resp.outputs.forEach((meta, i) => {
    outputs[meta.name] = decodeTensor(meta, resp.raw_output_contents.length ? resp.raw_output_contents[i] : undefined);
  });
  const v = resp.parameters && resp.parameters.sjff_version;
  return {
    outputs,
    label: outputs.label,
    scores: outputs.scores,
    probability: outputs.probability,
    modelName: resp.model_name,
    modelVersion: resp.model_version,
    version: v ? Number(v.int64_param) : 0,
    id: resp.id,
  };
}

/** images: Uint8Array (0..255) or Float32Array ([0, 1]) holding n rows. */
function imagesTensor(images, n) {
  const isU8 = images instanceof Uint8Array;
  const bytes = isU8 ? Buffer.from(images) : Buffer.from(new Float32Array(images).buffer);
  const perRow = images.length / n;
  if (!Number.isInteger(perRow)) throw new Error(`${images.length} values do not split into ${n} images`);
  return { datatype: isU8 ? 'UINT8' : 'FP32', encoding: isU8 ? 'IMAGE_ENCODING_UINT8' : 'IMAGE_ENCODING_FP32', bytes, shape: [n, perRow] };
}

function promisify(client, method) {
  return (request, metadata, options) => new Promise((resolve, reject) => {
    client[method](request, metadata, options, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

class SjffClient {
  /**
   * @param {string} target host:port
   * @param {object} opts token, model (default "mnist"), timeoutMs, rootCa/clientCert/clientKey
   *   (PEM file paths: TLS / mutual TLS), tls (system roots)
   */
  constructor(target = 'localhost:8001', opts = {}) {
    const { Inference, Learning } = loadServices(opts.protoRoot);
    let creds = grpc.credentials.createInsecure();
    if (opts.tls || opts.rootCa || opts.clientCert) {
      const read = (p) => (p ? fs.readFileSync(p) : null);
      creds = grpc.credentials.createSsl(read(opts.rootCa), read(opts.clientKey), read(opts.clientCert));
    }
    const options = { 'grpc.max_receive_message_length': 64 << 20 };
    this.inference = new Inference(target, creds, options);
    this.learning = new Learning(target, creds, options);
    this.model = opts.model || 'mnist';
    this.timeoutMs = opts.timeoutMs || 30000;
    this.metadata = new grpc.Metadata();
    const token = opts.token || process.env.SJFF_TOKEN;
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
  }

  _call(client, method, request) {
    return promisify(client, method)(request, this.metadata, { deadline: Date.now() + this.timeoutMs });
  }

  close() {
    this.inference.close();
    this.learning.close();
  }

  async serverLive() { return (await this._call(this.inference, 'ServerLive', {})).live; }

  async serverReady() { return (await this._call(this.inference, 'ServerReady', {})).ready; }

  async modelReady(model = this.model, version = '') {
    return (await this._call(this.inference, 'ModelReady', { name: model, version })).ready;
  }

  serverMetadata() { return this._call(this.inference, 'ServerMetadata', {}); }

  modelMetadata(model = this.model, version = '') {
    return this._call(this.inference, 'ModelMetadata', { name: model, version });
  }

  /**
   * Infer n images; opts: model, version, outputs [names], seed, typed (typed contents),
   * minVersion (answer from this learning version or a later one: the server waits for it
   * within the deadline; pass the version a learn returned to read your writes on any replica).
   */
  async infer(images, n, opts = {}) {
    const t = imagesTensor(images, n);
    const parameters = {};
    if (opts.seed !== undefined) parameters.seed = { int64_param: opts.seed };
    if (opts.minVersion !== undefined) parameters.min_version = { int64_param: opts.minVersion };
    if (opts.typed) parameters.typed_output = { bool_param: true };
    const req = {
      model_name: opts.model || this.model,
      model_version: opts.version || '',
      id: opts.id || '',
      inputs: [{ name: 'images', datatype: t.datatype, shape: t.shape }],
      outputs: (opts.outputs || []).map((name) => ({ name })),
      raw_input_contents: [t.bytes],
      parameters,
    };
    return parseInferResponse(await this._call(this.inference, 'ModelInfer', req));
  }

  /** ModelStreamInfer over an array of {images, n}; resolves to results in order. */
  inferStream(batches, opts = {}) {
    return new Promise((resolve, reject) => {
      const call = this.inference.ModelStreamInfer(this.metadata, { deadline: Date.now() + this.timeoutMs });
      const results = [];
      call.on('data', (r) => {
        if (r.error_message) results.push(new Error(r.error_message));
        else results.push(parseInferResponse(r.infer_response));
      });
      call.on('error', reject);
      call.on('end', () => resolve(results));
      batches.forEach(({ images, n }, i) => {
        const t = imagesTensor(images, n);
        call.write({
          model_name: opts.model || this.model,
          id: String(i),
          inputs: [{ name: 'images', datatype: t.datatype, shape: t.shape }],
          raw_input_contents: [t.bytes],
        });
      });
      call.end();
    });
  }

  /**
   * One durable on-line update; labels [n], positive [n] (default all true). opts.requestId is
   * its idempotency key (default a fresh UUID, returned as requestId): resend a learn whose
   * answer was lost with the same key and the server applies it once.
   */
  async learn(images, labels, opts = {}) {
    const t = imagesTensor(images, labels.length);
    const req = {
      model_name: opts.model || this.model,
      model_version: opts.version || '',
      images: t.bytes,
      encoding: t.encoding,
      labels,
      positive: opts.positive || [],
      request_id: opts.requestId || crypto.randomUUID(),
    };
    if (opts.seed !== undefined) req.seed = opts.seed;
    if (opts.eta !== undefined) req.eta = opts.eta;
    if (opts.expectedVersion !== undefined) req.expected_version = opts.expectedVersion;
    const r = await this._call(this.learning, 'Learn', req);
    return {
      version: Number(r.version),
      logOdds: r.log_odds,
      modelName: r.model_name,
      modelVersion: r.model_version,
      requestId: req.request_id,
    };
  }

  async stats(model = '') {
    return (await this._call(this.learning, 'GetStats', { model_name: model })).models;
  }

  listVersions(model = this.model, limit = 20) {
    return this._call(this.learning, 'ListVersions', { model_name: model, limit });
  }
}

module.exports = { SjffClient, loadServices, parseInferResponse, decodeTensor, PROTO_ROOT };
