// Validates values against the bare JSON Schemas (`--format jsonschema`) with Ajv's draft 2020-12
// validator. Arguments: the schema document and a JSON file of cases [{pointer, data}], where
// pointer locates a schema inside the document (e.g. "/strategies/app::rooms:send/request").
// Prints [{pointer, valid, errors}] as JSON.
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

const document = JSON.parse(readFileSync(process.argv[2], "utf8"));
const cases = JSON.parse(readFileSync(process.argv[3], "utf8"));
// strict: false: the document maps strategies and events to schemas under keys of its own.
const ajv = new Ajv2020({ strict: false, allErrors: true });
ajv.addSchema(document, "contract");
const results = cases.map(({ pointer, data }) => {
  const validate = ajv.compile({ $ref: `contract#${pointer}` });
  const valid = validate(data);
  return { pointer, valid, errors: valid ? [] : validate.errors.map((e) => `${e.instancePath} ${e.message}`) };
});
console.log(JSON.stringify(results));
