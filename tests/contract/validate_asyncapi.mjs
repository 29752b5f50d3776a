// Validates an AsyncAPI document (a file, JSON or YAML) with the official parser
// (@asyncapi/parser: the AsyncAPI 3.0 JSON Schema plus the spec's semantic rules).
// Prints {"errors": [...], "warnings": [...], "operations": [...]} and exits 1 on any error.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const text = readFileSync(process.argv[2], "utf8");
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text);
const describe = (d) => `${d.code}: ${d.message} at /${(d.path || []).join("/")}`;
const errors = diagnostics.filter((d) => d.severity === 0).map(describe);
const warnings = diagnostics.filter((d) => d.severity === 1).map(describe);
const operations = document
  ? document.operations().all().map((op) => ({
      id: op.id(),
      action: op.action(),
      title: op.title(),
      messages: op.messages().all().map((m) => m.name()),
      reply: op.reply() ? op.reply().messages().all().map((m) => m.name()) : null,
      correlation: op.messages().all().map((m) => (m.correlationId() ? m.correlationId().location() : null)),
    }))
  : [];
console.log(JSON.stringify({ version: document ? document.version() : null, errors, warnings, operations }));
process.exit(errors.length || !document ? 1 : 0);
