// A small JSON Schema validator for the dashboard's payload editor: what the kinds'
// payload schemas use (draft 2020-12 as schemars writes it): type, enum, const,
// properties, required, additionalProperties, patternProperties, items, min/maxItems,
// minimum/maximum (and exclusive), multipleOf, min/maxLength, pattern, oneOf, anyOf,
// allOf, not, if/then/else and local $ref (#/$defs/...). Unknown keywords (format,
// description, default, ...) are ignored, as a validator must. The gateway checks every
// payload again on submit; this only shows the errors while typing.
//
// validate(schema, value) -> [{path: "/ms", message: "must be at most 60000"}, ...]
// example(schema, uploadField) -> a payload that fits (required fields, defaults).
(function (root) {
  'use strict';

  const MAX_DEPTH = 64;

  function typeOf(value) {
    if (value === null) return 'null';
    if (Array.isArray(value)) return 'array';
    if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
    return typeof value; // string, boolean, object
  }

  function hasType(value, type) {
    const actual = typeOf(value);
    if (type === 'number') return actual === 'number' || actual === 'integer';
    return actual === type;
  }

  function equal(a, b) {
    if (a === b) return true;
    if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
    if (Array.isArray(a) !== Array.isArray(b)) return false;
    if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => equal(x, b[i]));
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && equal(a[k], b[k]));
  }

  function pointerEscape(key) {
    return String(key).replace(/~/g, '~0').replace(/\//g, '~1');
  }

  function show(value) {
    const text = JSON.stringify(value);
    return text === undefined ? String(value) : text.length > 60 ? text.slice(0, 57) + '...' : text;
  }

  function resolve(rootSchema, ref) {
    if (typeof ref !== 'string' || !ref.startsWith('#')) return null;
    let node = rootSchema;
    const path = ref.slice(1);
    if (path === '') return node;
    for (const raw of path.replace(/^\//, '').split('/')) {
      const key = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
      if (node === null || typeof node !== 'object' || !(key in node)) return null;
      node = node[key];
    }
    return node;
  }

  const patterns = new Map();
  function regex(pattern) {
    if (!patterns.has(pattern)) {
      let compiled = null;
      try {
        compiled = new RegExp(pattern, 'u');
      } catch (_) {
        compiled = null; // a pattern JavaScript cannot read is left to the server
      }
      patterns.set(pattern, compiled);
    }
    return patterns.get(pattern);
  }

  // How a set of alternatives reads in a message: the consts as a list of values, or
  // each alternative's required fields.
  function describeAlternatives(rootSchema, alternatives) {
    const branches = alternatives.map((b) => (b && b.$ref ? resolve(rootSchema, b.$ref) || b : b));
    if (branches.every((b) => b && typeof b === 'object' && 'const' in b)) {
      return 'one of ' + branches.map((b) => show(b.const)).join(', ');
    }
    if (branches.every((b) => b && Array.isArray(b.required) && b.required.length > 0)) {
      return 'exactly one of: ' + branches.map((b) => b.required.join(' + ')).join(', ');
    }
    return branches.length + ' alternatives';
  }

  function check(rootSchema, schema, value, path, errors, depth) {
    if (schema === true || schema === undefined) return;
    if (schema === false) {
      errors.push({ path, message: 'is not allowed here' });
      return;
    }
    if (schema === null || typeof schema !== 'object' || depth > MAX_DEPTH) return;
    const add = (message, at) => errors.push({ path: at === undefined ? path : at, message });

    if (schema.$ref !== undefined) {
      const target = resolve(rootSchema, schema.$ref);
      if (target !== null) check(rootSchema, target, value, path, errors, depth + 1);
    }

    if (schema.type !== undefined) {
      const types = Array.isArray(schema.type) ? schema.type : [schema.type];
      if (!types.some((t) => hasType(value, t))) {
        add('must be ' + types.join(' or ') + ', not ' + typeOf(value));
        return; // the other checks would only repeat it
      }
    }
    if (schema.const !== undefined && !equal(value, schema.const)) {
      add('must be ' + show(schema.const));
    }
    if (Array.isArray(schema.enum) && !schema.enum.some((v) => equal(v, value))) {
      add('must be one of ' + schema.enum.map(show).join(', '));
    }

    if (typeof value === 'number') {
      if (typeof schema.minimum === 'number' && value < schema.minimum) add('must be at least ' + schema.minimum);
      if (typeof schema.maximum === 'number' && value > schema.maximum) add('must be at most ' + schema.maximum);
      if (typeof schema.exclusiveMinimum === 'number' && value <= schema.exclusiveMinimum) {
        add('must be more than ' + schema.exclusiveMinimum);
      }
      if (typeof schema.exclusiveMaximum === 'number' && value >= schema.exclusiveMaximum) {
        add('must be less than ' + schema.exclusiveMaximum);
      }
      if (typeof schema.multipleOf === 'number' && schema.multipleOf > 0) {
        const q = value / schema.multipleOf;
        if (Math.abs(q - Math.round(q)) > 1e-9) add('must be a multiple of ' + schema.multipleOf);
      }
    }

    if (typeof value === 'string') {
      const length = [...value].length;
      if (typeof schema.minLength === 'number' && length < schema.minLength) {
        add('must be at least ' + schema.minLength + ' characters long');
      }
      if (typeof schema.maxLength === 'number' && length > schema.maxLength) {
        add('must be at most ' + schema.maxLength + ' characters long');
      }
      if (typeof schema.pattern === 'string') {
        const re = regex(schema.pattern);
        if (re && !re.test(value)) add('must match the pattern ' + schema.pattern);
      }
    }

    if (Array.isArray(value)) {
      if (typeof schema.minItems === 'number' && value.length < schema.minItems) {
        add('must have at least ' + schema.minItems + ' items');
      }
      if (typeof schema.maxItems === 'number' && value.length > schema.maxItems) {
        add('must have at most ' + schema.maxItems + ' items');
      }
      const prefix = Array.isArray(schema.prefixItems) ? schema.prefixItems : [];
      value.forEach((item, i) => {
        const itemSchema = i < prefix.length ? prefix[i] : schema.items;
        if (itemSchema !== undefined) check(rootSchema, itemSchema, item, path + '/' + i, errors, depth + 1);
      });
      if (schema.uniqueItems === true) {
        for (let i = 0; i < value.length; i++) {
          for (let j = i + 1; j < value.length; j++) {
            if (equal(value[i], value[j])) {
              add('must not repeat items (' + i + ' and ' + j + ' are equal)');
              i = value.length;
              break;
            }
          }
        }
      }
    }

    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      const properties = schema.properties && typeof schema.properties === 'object' ? schema.properties : {};
      if (Array.isArray(schema.required)) {
        for (const name of schema.required) {
          if (!Object.prototype.hasOwnProperty.call(value, name)) add('is missing required field ' + show(name));
        }
      }
      const patternProps = schema.patternProperties && typeof schema.patternProperties === 'object'
        ? Object.entries(schema.patternProperties) : [];
      for (const [name, child] of Object.entries(value)) {
        const at = path + '/' + pointerEscape(name);
        let known = false;
        if (Object.prototype.hasOwnProperty.call(properties, name)) {
          known = true;
          check(rootSchema, properties[name], child, at, errors, depth + 1);
        }
        for (const [pattern, sub] of patternProps) {
          const re = regex(pattern);
          if (re && re.test(name)) {
            known = true;
            check(rootSchema, sub, child, at, errors, depth + 1);
          }
        }
        if (!known && schema.additionalProperties !== undefined) {
          if (schema.additionalProperties === false) {
            const allowed = Object.keys(properties);
            add('has an unknown field ' + show(name) + (allowed.length ? ' (known: ' + allowed.join(', ') + ')' : ' (no fields allowed)'));
          } else {
            check(rootSchema, schema.additionalProperties, child, at, errors, depth + 1);
          }
        }
      }
      if (typeof schema.minProperties === 'number' && Object.keys(value).length < schema.minProperties) {
        add('must have at least ' + schema.minProperties + ' fields');
      }
      if (typeof schema.maxProperties === 'number' && Object.keys(value).length > schema.maxProperties) {
        add('must have at most ' + schema.maxProperties + ' fields');
      }
    }

    const passes = (sub) => {
      const found = [];
      check(rootSchema, sub, value, path, found, depth + 1);
      return found;
    };
    if (Array.isArray(schema.allOf)) {
      for (const sub of schema.allOf) check(rootSchema, sub, value, path, errors, depth + 1);
    }
    if (Array.isArray(schema.anyOf) && schema.anyOf.length > 0) {
      const results = schema.anyOf.map(passes);
      if (!results.some((r) => r.length === 0)) {
        add('must match ' + describeAlternatives(rootSchema, schema.anyOf).replace(/^exactly /, 'at least '));
      }
    }
    if (Array.isArray(schema.oneOf) && schema.oneOf.length > 0) {
      const matched = schema.oneOf.map(passes).filter((r) => r.length === 0).length;
      if (matched !== 1) {
        const what = describeAlternatives(rootSchema, schema.oneOf);
        add(what.startsWith('one of ')
          ? 'must be ' + what
          : 'must match ' + what + (matched === 0 ? ' (it matches none)' : ' (it matches ' + matched + ')'));
      }
    }
    if (schema.not !== undefined && passes(schema.not).length === 0) add('must not match the schema under "not"');
    if (schema.if !== undefined) {
      const branch = passes(schema.if).length === 0 ? schema.then : schema.else;
      if (branch !== undefined) check(rootSchema, branch, value, path, errors, depth + 1);
    }
  }

  function validate(schema, value) {
    const errors = [];
    check(schema, schema, value, '', errors, 0);
    // The same message for the same place once (allOf/$ref can repeat one).
    const seen = new Set();
    return errors.filter((e) => {
      const key = e.path + '\u0000' + e.message;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
  }

  // A value of `schema`'s type for an example: its default, const, first enum value,
  // minimum, or an empty one.
  function sample(rootSchema, schema, depth) {
    if (!schema || typeof schema !== 'object' || depth > 8) return null;
    if (schema.$ref) return sample(rootSchema, resolve(rootSchema, schema.$ref), depth + 1);
    if (schema.default !== undefined && schema.default !== null) return schema.default;
    if (schema.const !== undefined) return schema.const;
    if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
    for (const key of ['oneOf', 'anyOf']) {
      if (Array.isArray(schema[key]) && schema[key].length) return sample(rootSchema, schema[key][0], depth + 1);
    }
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    const type = types.find((t) => t && t !== 'null');
    switch (type) {
      case 'integer':
      case 'number':
        return typeof schema.minimum === 'number' ? schema.minimum : 0;
      case 'string':
        return '';
      case 'boolean':
        return false;
      case 'array':
        return [];
      case 'object':
        return example(rootSchema, undefined, schema);
      default:
        return null;
    }
  }

  // A payload that fits: the required fields and those with a default; of top-level
  // alternatives (oneOf/anyOf), the one taking the upload field if there is one (the
  // file fills it), else the first.
  function example(schema, uploadField, node) {
    const rootSchema = schema;
    const here = node || schema;
    if (!here || typeof here !== 'object') return {};
    const properties = here.properties || {};
    const out = {};
    const wanted = new Set(Array.isArray(here.required) ? here.required : []);
    for (const [name, sub] of Object.entries(properties)) {
      if (sub && sub.default !== undefined && sub.default !== null) wanted.add(name);
    }
    const alternatives = here.oneOf || here.anyOf;
    if (Array.isArray(alternatives) && alternatives.length) {
      const takesUpload = alternatives.find((b) => Array.isArray(b.required) && b.required.includes(uploadField));
      const branch = takesUpload || alternatives[0];
      for (const name of branch.required || []) {
        if (name !== uploadField) wanted.add(name);
      }
    }
    for (const name of wanted) {
      if (name === uploadField) continue;
      out[name] = sample(rootSchema, properties[name] || {}, 1);
    }
    return out;
  }

  const api = { validate, example, typeOf };
  if (typeof module === 'object' && module.exports) module.exports = api;
  else root.JJSchema = api;
})(typeof self !== 'undefined' ? self : this);
