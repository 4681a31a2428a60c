// node-hello: a CloudEvents function in Node.js. fmesh starts it with $PORT set and
// POSTs each event to it (binary mode); the CloudEvent it answers with is the reply.
const http = require("http");
const { HTTP, CloudEvent } = require("cloudevents");

const port = Number(process.env.PORT || 8080);

function reply(res, event) {
  const name = (event.data && event.data.name) || "world";
  const answer = new CloudEvent({
    type: `${event.type}.reply`,
    source: "/functions/node-hello",
    datacontenttype: "application/json",
    data: { greeting: `Hello, ${name}!`, from: "node", version: process.env.FMESH_VERSION },
  });
  const message = HTTP.binary(answer);
  res.writeHead(200, message.headers);
  res.end(message.body);
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/healthz") {
    res.writeHead(200).end("ok");
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    try {
      const event = HTTP.toEvent({ headers: req.headers, body: Buffer.concat(chunks).toString() });
      console.log(`node-hello got ${event.type} ${event.id}`);
      reply(res, event);
    } catch (err) {
      console.error(`node-hello: not a CloudEvent: ${err.message}`);
      res.writeHead(400).end(String(err.message));
    }
  });
});

server.listen(port, "127.0.0.1", () => console.log(`node-hello listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
