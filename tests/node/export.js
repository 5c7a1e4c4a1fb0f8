// A Node.js service exporting one job run with the official OpenTelemetry JS SDK, as a
// team pointing its exporter at the trifle-otel sidecar would.
//
// usage: node export.js <proto|grpc> <url> [token]
//   proto: @opentelemetry/exporter-trace-otlp-proto, url http://127.0.0.1:4318/v1/traces
//   grpc:  @opentelemetry/exporter-trace-otlp-grpc,  url http://127.0.0.1:4317
// Prints the exported spans as JSON lines ({name, traceId, spanId, parentSpanId}) and
// exits 0 when the export succeeded, 1 with the error otherwise.
'use strict';

const api = require('@opentelemetry/api');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} = require('@opentelemetry/sdk-trace-base');

const [protocol, url, token] = process.argv.slice(2);

function makeExporter() {
  if (protocol === 'proto') {
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
    return new OTLPTraceExporter({
      url,
      compression: 'gzip',
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    });
  }
  if (protocol === 'grpc') {
    const grpc = require('@grpc/grpc-js');
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
    const metadata = new grpc.Metadata();
    if (token) metadata.set('authorization', `Bearer ${token}`);
    return new OTLPTraceExporter({ url, compression: 'gzip', metadata });
  }
  throw new Error(`unknown protocol ${protocol}: use proto or grpc`);
}

// The spans are collected in memory first, then exported in one call whose result we
// can report (a span processor would only log a failure).
const collected = new InMemorySpanExporter();
const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({
    'service.name': 'checkout-node',
    'service.instance.id': 'node-1',
    'host.name': 'web-7',
    'process.pid': process.pid,
  }),
  spanProcessors: [new SimpleSpanProcessor(collected)],
});
const tracer = provider.getTracer('checkout.jobs', '2.1.0');

// The job's parent is the web request that enqueued it, in another process.
const enqueuedBy = api.trace.setSpanContext(api.context.active(), {
  traceId: '0af7651916cd43dd8448eb211c80319c',
  spanId: 'b7ad6b7169203331',
  traceFlags: api.TraceFlags.SAMPLED,
  isRemote: true,
});
const root = tracer.startSpan(
  'run/checkout.send_receipt',
  {
    kind: api.SpanKind.CONSUMER,
    attributes: {
      'trifle.key': 'checkout/receipts',
      'customer.id': 'acme',
      'order.total': 129.5,
      'items.count': 3,
      'gift': false,
      'trifle.tags': ['vip', 'eu'],
    },
  },
  enqueuedBy,
);
const inJob = api.trace.setSpan(api.context.active(), root);

const render = tracer.startSpan('Rendering receipt', { attributes: { template: 'receipt-v2' } }, inJob);
render.addEvent('template loaded', { 'bytes': 2048 });
render.setAttribute('trifle.result', 'receipt.pdf (2 pages)');
render.end();

const send = tracer.startSpan('Sending e-mail', { kind: api.SpanKind.CLIENT }, inJob);
send.recordException(new Error('SMTP 451: try again later'));
send.setStatus({ code: api.SpanStatusCode.ERROR, message: 'SMTP 451' });
send.end();

root.end();

const spans = collected.getFinishedSpans();
for (const span of spans) {
  const ctx = span.spanContext();
  console.log(JSON.stringify({
    name: span.name,
    traceId: ctx.traceId,
    spanId: ctx.spanId,
    parentSpanId: span.parentSpanContext ? span.parentSpanContext.spanId : null,
  }));
}

const exporter = makeExporter();
exporter.export(spans, async (result) => {
  await exporter.shutdown();
  await provider.shutdown();
  if (result.code !== 0) {
    console.error(`export failed: ${result.error ? result.error.message : 'unknown error'}`);
    process.exit(1);
  }
  process.exit(0);
});
