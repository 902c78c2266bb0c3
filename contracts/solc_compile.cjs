// Runs solc-js on a standard-JSON input file and writes the output to a file (the solcjs CLI truncates
// piped output near 64 KiB). Imports resolve against node_modules/ (OpenZeppelin) and the repository root.
// Usage: node contracts/solc_compile.cjs INPUT.json OUTPUT.json REPO_ROOT
"use strict";
const fs = require("fs");
const path = require("path");

const [inputPath, outputPath, root] = process.argv.slice(2);
const solc = require(path.join(root, "node_modules", "solc"));

function findImports(unitName) {
  for (const base of [path.join(root, "node_modules"), root]) {
    const candidate = path.join(base, unitName);
    if (candidate.startsWith(base + path.sep) && fs.existsSync(candidate)) {
      return { contents: fs.readFileSync(candidate, "utf8") };
    }
  }
  return { error: `File not found: ${unitName}` };
}

const output = solc.compile(fs.readFileSync(inputPath, "utf8"), { import: findImports });
fs.writeFileSync(outputPath, JSON.stringify({ solcVersion: solc.version(), output: JSON.parse(output) }));
