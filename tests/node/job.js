// A Node.js worker running one billing job, instrumented with the official OpenTelemetry
// JS SDK the way an app is (a BatchSpanProcessor and the OTLP exporter), pointed at the
// trifle-otel sidecar.  It follows the sidecar's conventions for other languages: a start
// marker (a zero-length child span of the job's root with `trifle.pending: true`, named as
// the job and carrying its key) so the job shows as running at once, `trifle.*` attributes
// for the key, tags and results.
//
// usage: node job.js <proto|grpc> <url>
//   proto: url http://127.0.0.1:4318/v1/traces    grpc: url http://127.0.0.1:4317
// Prints "started <traceId> <rootSpanId>" once the marker and the first step are exported,
// then waits for a line on stdin before it finishes the job; exits 0 when every export
// succeeded.
'use strict';

const readline = require('readline');
const api = require('@opentelemetry/api');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');

const [protocol, url] = process.argv.slice(2);

function makeExporter() {
  if (protocol === 'proto') {
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
    return new OTLPTraceExporter({ url, compression: 'gzip' });
  }
  const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
  return new OTLPTraceExporter({ url, compression: 'gzip' });
}

let failures = 0;
const exporter = makeExporter();
const exportOriginal = exporter.export.bind(exporter);
exporter.export = (spans, done) => exportOriginal(spans, (result) => {
  if (result.code !== 0) {
    failures += 1;
    console.error(`export failed: ${result.error ? result.error.message : 'unknown error'}`);
  }
  done(result);
});

const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({
    'service.name': 'billing-node',
    'service.instance.id': 'billing-node-1',
    'host.name': 'worker-3',
  }),
  spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: 200 })],
});
const tracer = provider.getTracer('billing.jobs', '3.0.0');

function step(name, parentContext, options, body) {
  const span = tracer.startSpan(name, options || {}, parentContext);
  const inside = api.trace.setSpan(parentContext, span);
  try {
    body(span, inside);
  } finally {
    span.end();
  }
}

async function main() {
  // Enqueued by the web app: the job's parent is a remote span.
  const enqueuedBy = api.trace.setSpanContext(api.context.active(), {
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    spanId: '00f067aa0ba902b7',
    traceFlags: api.TraceFlags.SAMPLED,
    isRemote: true,
  });
  const root = tracer.startSpan('run/billing.invoice', {
    kind: api.SpanKind.CONSUMER,
    attributes: { 'trifle.key': 'billing/invoices', 'customer.id': 'acme', 'reseller.id': 'r7', 'trifle.tags': ['vip'] },
  }, enqueuedBy);
  const job = api.trace.setSpan(enqueuedBy, root);

  // The start marker: the job is running (OTel exports the root only when it ends).
  tracer.startSpan('run/billing.invoice', {
    attributes: { 'trifle.pending': true, 'trifle.key': 'billing/invoices', 'customer.id': 'acme' },
  }, job).end();

  step('Loading invoice lines', job, {}, (span, inside) => {
    step('SELECT invoice_lines', inside, { kind: api.SpanKind.CLIENT, attributes: { 'db.rows': 3 } }, () => {});
    span.setAttribute('trifle.result', '3 lines');
  });
  await provider.forceFlush();
  console.log(`started ${root.spanContext().traceId} ${root.spanContext().spanId}`);

  await new Promise((resolve) => readline.createInterface({ input: process.stdin }).once('line', resolve));

  step('Computing totals', job, {}, (span) => {
    span.addEvent('discount applied', { percent: 5 });
    span.setAttribute('trifle.result', '129.50 EUR');
  });
  step('Sending e-mail', job, { kind: api.SpanKind.CLIENT }, (span) => {
    span.recordException(new Error('SMTP 451: try again later'));
    span.setStatus({ code: api.SpanStatusCode.ERROR, message: 'SMTP 451' });
  });
  root.setAttribute('invoice.total', 129.5);
  root.end();
  await provider.forceFlush();
  await provider.shutdown();
  process.exit(failures ? 1 : 0);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
