// An independent OPC UA server for Valvoja's interoperability test (node-opcua, not asyncua).
//
//   node server.js PORT PKI_DIR
//
// Serves opc.tcp://127.0.0.1:PORT/valvoja with security None and Basic256Sha256 / Aes128_Sha256_RsaOaep
// (Sign, SignAndEncrypt), anonymous and user "valvoja" / password from $NODE_OPCUA_PASSWORD. Its own
// certificate is made in PKI_DIR on first start, naming 127.0.0.1 (alternateHostname: the gateway checks the
// endpoint host against it); client certificates are accepted (this peer tests the
// gateway's side of the trust). Address space: Objects/Line1 with AnalogItems (EURange, units), an Int32,
// a Boolean, a String and a Double array; values change every 100 ms with source timestamps. Count and Temperature
// are historized (HistoryRead).
// $NODE_OPCUA_MAX_PER_CALL (optional): the operation limits MaxMonitoredItemsPerCall, MaxNodesPerRead and
// MaxNodesPerTranslateBrowsePathsToNodeIds, which node-opcua enforces (BadTooManyOperations past them).
"use strict";
const path = require("path");
const opcua = require("node-opcua");

async function main() {
  const port = parseInt(process.argv[2], 10);
  const pki = process.argv[3];
  const serverCertificateManager = new opcua.OPCUACertificateManager({
    automaticallyAcceptUnknownCertificate: true, rootFolder: path.join(pki, "server"),
  });
  await serverCertificateManager.initialize();
  const password = process.env.NODE_OPCUA_PASSWORD || "s3cret";
  const perCall = parseInt(process.env.NODE_OPCUA_MAX_PER_CALL || "0", 10);
  const serverCapabilities = perCall > 0 ? { operationLimits: {
    maxMonitoredItemsPerCall: perCall, maxNodesPerRead: perCall, maxNodesPerTranslateBrowsePathsToNodeIds: perCall,
  } } : undefined;
  const server = new opcua.OPCUAServer({
    port, resourcePath: "/valvoja", hostname: "127.0.0.1", alternateHostname: ["127.0.0.1"],
    serverCertificateManager,
    securityPolicies: [opcua.SecurityPolicy.None, opcua.SecurityPolicy.Basic256Sha256,
                       opcua.SecurityPolicy.Aes128_Sha256_RsaOaep],
    securityModes: [opcua.MessageSecurityMode.None, opcua.MessageSecurityMode.Sign,
                    opcua.MessageSecurityMode.SignAndEncrypt],
    allowAnonymous: true, serverCapabilities,
    userManager: { isValidUser: (user, pw) => user === "valvoja" && pw === password },
    serverInfo: { applicationUri: "urn:valvoja:node-opcua:peer", productUri: "urn:valvoja:node-opcua",
                  applicationName: { text: "Valvoja node-opcua peer" } },
  });
  await server.initialize();
  const ns = server.engine.addressSpace.getOwnNamespace();
  const line = ns.addFolder(server.engine.addressSpace.rootFolder.objects, { browseName: "Line1" });
  const values = { temp: 20.0, pressure: 1.0, count: 0, running: true, mode: "auto", profile: [1.0, 2.0, 3.0] };
  const D = opcua.DataType;
  const vars = {
    temp: [ns.addAnalogDataItem({ componentOf: line, browseName: "Temperature", nodeId: "s=Line1.Temperature",
      dataType: "Double", engineeringUnitsRange: { low: -50, high: 150 },
      engineeringUnits: opcua.standardUnits.degree_celsius, minimumSamplingInterval: 0 }), D.Double],
    pressure: [ns.addAnalogDataItem({ componentOf: line, browseName: "Pressure", nodeId: "s=Line1.Pressure",
      dataType: "Double", engineeringUnitsRange: { low: 0, high: 10 }, engineeringUnits: opcua.standardUnits.bar,
      minimumSamplingInterval: 0 }), D.Double],
    count: [ns.addVariable({ componentOf: line, browseName: "Count", nodeId: "s=Line1.Count", dataType: "Int32",
      minimumSamplingInterval: 0 }), D.Int32],
    running: [ns.addVariable({ componentOf: line, browseName: "Running", nodeId: "s=Line1.Running",
      dataType: "Boolean", minimumSamplingInterval: 0 }), D.Boolean],
    mode: [ns.addVariable({ componentOf: line, browseName: "Mode", nodeId: "s=Line1.Mode", dataType: "String",
      minimumSamplingInterval: 0 }), D.String],
    profile: [ns.addVariable({ componentOf: line, browseName: "Profile", nodeId: "s=Line1.Profile",
      dataType: "Double", valueRank: 1, arrayDimensions: [3], minimumSamplingInterval: 0 }), D.Double],
  };
  // Count and Temperature keep their history (HistoryRead, ReadRawModified, with continuation points); the others
  // have none (the server refuses HistoryRead on them).
  for (const key of ["count", "temp"]) {
    server.engine.addressSpace.installHistoricalDataNode(vars[key][0], { maxOnlineValues: 100000 });
  }
  const publish = () => {
    const stamp = new Date();
    for (const [key, [node, dataType]] of Object.entries(vars)) {
      const v = values[key];
      const variant = Array.isArray(v)
        ? new opcua.Variant({ dataType, arrayType: opcua.VariantArrayType.Array, value: new Float64Array(v) })
        : new opcua.Variant({ dataType, value: v });
      node.setValueFromSource(variant, opcua.StatusCodes.Good, stamp);
    }
  };
  publish();
  setInterval(() => {
    values.count += 1;
    values.temp = 20.0 + (values.count % 50);  // steps of 1.0 degC
    values.pressure = 1.0 + 0.001 * (values.count % 10);  // tiny changes: inside a 1 % deadband
    values.running = values.count % 20 < 10;
    values.profile = [values.count, values.count + 0.5, values.count + 1.0];
    publish();
  }, 100);
  await server.start();
  console.log(`listening ${server.getEndpointUrl()}`);
  const stop = async () => { await server.shutdown(100); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { console.error(err); process.exit(1); });
