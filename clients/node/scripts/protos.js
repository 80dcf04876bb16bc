#!/usr/bin/env node
'use strict';
/**
 * Ship the .proto files with the package: `npm pack` / `npm publish` run `prepack`, which copies
 * the repository's protos/ into ./protos (listed in package.json "files"), and `postpack`,
 * which removes the copy. A copy left behind (a pack interrupted in between) is harmless:
 * index.js reads the repository's protos/ whenever it runs from a checkout.
 *
 *   node scripts/protos.js copy | clean
 */
const fs = require('node:fs');
const path = require('node:path');

const PACKAGE_DIR = path.join(__dirname, '..');
const SOURCE = path.join(PACKAGE_DIR, '..', '..', 'protos');
const TARGET = path.join(PACKAGE_DIR, 'protos');

function copy() {
  if (!fs.existsSync(SOURCE)) throw new Error(`${SOURCE}: no protos/ (pack from a checkout of the repository)`);
  fs.rmSync(TARGET, { recursive: true, force: true });
  fs.cpSync(SOURCE, TARGET, { recursive: true, filter: (src) => fs.statSync(src).isDirectory() || src.endsWith('.proto') });
}

function clean() {
  fs.rmSync(TARGET, { recursive: true, force: true });
}

const command = process.argv[2];
if (command === 'copy') copy();
else if (command === 'clean') clean();
else throw new Error(`usage: node scripts/protos.js copy | clean (got ${command})`);
