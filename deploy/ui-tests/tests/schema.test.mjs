// The payload editor's validator (services/gateway/ui/assets/schema.js): unit tests, and,
// with a system to ask (JETJOBS_URL), agreement with the gateway's own check for every
// registered kind.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';

const require = createRequire(import.meta.url);
const { validate, example } = require('../../../services/gateway/ui/assets/schema.js');

const messages = (schema, value) => validate(schema, value).map((e) => e.path + ': ' + e.message);

test('types, required, properties and additionalProperties', () => {
  const schema = {
    type: 'object',
    additionalProperties: false,
    required: ['ms'],
    properties: { ms: { type: 'integer', minimum: 0, maximum: 60000 }, tag: { type: ['string', 'null'] } },
  };
  assert.deepEqual(messages(schema, { ms: 5 }), []);
  assert.deepEqual(messages(schema, { ms: 5, tag: null }), []);
  assert.deepEqual(messages(schema, {}), [': is missing required field "ms"']);
  assert.deepEqual(messages(schema, { ms: 1.5 }), ['/ms: must be integer, not number']);
  assert.deepEqual(messages(schema, { ms: -1 }), ['/ms: must be at least 0']);
  assert.deepEqual(messages(schema, { ms: 60001 }), ['/ms: must be at most 60000']);
  assert.deepEqual(messages(schema, { ms: 1, tag: 3 }), ['/tag: must be string or null, not integer']);
  assert.deepEqual(messages(schema, { ms: 1, 'a/b': 1 }), [': has an unknown field "a/b" (known: ms, tag)']);
  assert.deepEqual(messages(schema, []), [': must be object, not array']);
  assert.deepEqual(messages({ type: 'number' }, 3), []);
});

test('enum, const, oneOf, anyOf, allOf, not, if/then and $ref', () => {
  const root = {
    $defs: { Failure: { oneOf: [{ const: 'retryable', type: 'string' }, { const: 'permanent', type: 'string' }] } },
    properties: { fail: { $ref: '#/$defs/Failure' }, level: { enum: [1, 2, 'x'] } },
    oneOf: [{ required: ['a'] }, { required: ['b'] }],
  };
  assert.deepEqual(messages(root, { a: 1, fail: 'permanent', level: 'x' }), []);
  assert.deepEqual(messages(root, { a: 1, fail: 'sometimes' }), ['/fail: must be one of "retryable", "permanent"']);
  assert.deepEqual(messages(root, { a: 1, level: 3 }), ['/level: must be one of 1, 2, "x"']);
  assert.deepEqual(messages(root, {}), [': must match exactly one of: a, b (it matches none)']);
  assert.deepEqual(messages(root, { a: 1, b: 2 }), [': must match exactly one of: a, b (it matches 2)']);
  assert.deepEqual(messages({ anyOf: [{ type: 'string' }, { type: 'integer' }] }, 1), []);
  assert.equal(messages({ anyOf: [{ type: 'string' }, { type: 'integer' }] }, true).length, 1);
  assert.deepEqual(messages({ allOf: [{ minimum: 2 }, { maximum: 3 }] }, 4), [': must be at most 3']);
  assert.deepEqual(messages({ not: { type: 'string' } }, 'x'), [': must not match the schema under "not"']);
  const padded = { if: { type: 'string', minLength: 4 }, then: { pattern: '=$' } };
  assert.deepEqual(messages(padded, 'ab'), []);
  assert.deepEqual(messages(padded, 'abcd'), [': must match the pattern =$']);
  assert.deepEqual(messages(padded, 'abc='), []);
  assert.deepEqual(messages({ const: { a: [1] } }, { a: [1] }), []);
});

test('strings and arrays', () => {
  assert.deepEqual(messages({ maxLength: 2 }, 'ééé'), [': must be at most 2 characters long']);
  assert.deepEqual(messages({ minLength: 2 }, '😀😀'), []);
  assert.deepEqual(messages({ items: { type: 'integer' }, maxItems: 2 }, [1, 'x', 3]), [
    ': must have at most 2 items', '/1: must be integer, not string']);
  assert.deepEqual(messages({ uniqueItems: true }, [1, 2, 1]), [': must not repeat items (0 and 2 are equal)']);
  assert.deepEqual(messages({ exclusiveMinimum: 0, multipleOf: 0.5 }, 0.75), [': must be a multiple of 0.5']);
  assert.deepEqual(messages({ pattern: '(' }, 'x'), [], 'a pattern JavaScript cannot read is left to the server');
});

test('examples fit their schema', () => {
  const hash = {
    type: 'object',
    additionalProperties: false,
    required: ['rounds'],
    properties: {
      rounds: { type: 'integer', minimum: 1 },
      data_b64: { type: ['string', 'null'] },
      data_blob: { type: ['string', 'null'] },
      size: { type: ['integer', 'null'], minimum: 0 },
    },
    oneOf: [{ required: ['data_b64'] }, { required: ['data_blob'] }, { required: ['size'] }],
  };
  assert.deepEqual(example(hash), { rounds: 1, data_b64: '' });
  assert.deepEqual(validate(hash, example(hash)), []);
  // With an upload field, the alternative taking the file, without the field itself.
  assert.deepEqual(example(hash, 'data_blob'), { rounds: 1 });
});

const BASE = process.env.JETJOBS_URL;
test('the validator agrees with the gateway on every registered kind', { skip: !BASE && 'no JETJOBS_URL' }, async () => {
  const kinds = (await (await fetch(BASE + '/v1/kinds')).json()).kinds;
  assert.ok(kinds.length >= 5);
  const cases = {
    noop: [{}, { x: 1 }, [], 'x'],
    sleep: [{ ms: 0 }, { ms: -1 }, { ms: 60001 }, { ms: 1.5 }, {}, { ms: 1, y: 2 }],
    flaky: [{ fail: 'permanent', times: 0 }, { fail: 'sometimes' }, { times: null }, { times: 101 }, { ms: 60001 }],
    hash: [{ size: 0, rounds: 1 }, { rounds: 1 }, { size: 1, data_b64: 'aGk=', rounds: 1 }, { size: 1, rounds: 0 },
      { data_b64: 'aGk=', rounds: 1 }, { data_b64: null, rounds: 1 }],
    thumbnail: [{ width: 1, height: 1, image_b64: 'eA==' }, { width: 0, height: 1, image_b64: 'eA==' }, { width: 1, height: 1 }],
  };
  for (const kind of kinds) {
    for (const payload of cases[kind.kind] || [example(kind.payload_schema)]) {
      const local = validate(kind.payload_schema, payload);
      // delay_secs: valid jobs wait, and are cancelled below; nothing runs.
      const r = await fetch(BASE + '/v1/jobs', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ kind: kind.kind, payload, delay_secs: 3600 }),
      });
      const body = await r.json();
      const server = r.status === 422 && body.type === '/problems/invalid-payload' ? 'invalid' : r.status === 202 ? 'valid' : r.status;
      assert.equal(local.length === 0 ? 'valid' : 'invalid', server,
        kind.kind + ' ' + JSON.stringify(payload) + ': ours ' + JSON.stringify(local) + ', the gateway ' + JSON.stringify(body));
      if (r.status === 202) await fetch(BASE + '/v1/jobs/' + body.id, { method: 'DELETE' });
    }
  }
});
