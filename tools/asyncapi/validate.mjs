// Parse an AsyncAPI document (standard input) with the official parser and print its
// diagnostics as JSON: [{severity, code, message, path}]; severity 0 is an error. The Avro
// and Protobuf schema parsers are registered, so those payloads are checked too (without
// them the parser leaves payloads of other schema formats unread).
import { Parser } from '@asyncapi/parser';
import { AvroSchemaParser } from '@asyncapi/avro-schema-parser';
import { ProtoBuffSchemaParser } from '@asyncapi/protobuf-schema-parser';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const parser = new Parser();
parser.registerSchemaParser(AvroSchemaParser());
parser.registerSchemaParser(ProtoBuffSchemaParser());
const { document, diagnostics } = await parser.parse(Buffer.concat(chunks).toString('utf8'));
const found = diagnostics.map((d) => ({
  severity: d.severity,
  code: String(d.code),
  message: d.message,
  path: d.path.join('/'),
}));
process.stdout.write(JSON.stringify({ parsed: document !== undefined, diagnostics: found }));
