// Writes ../static/vendor/mdi-icons.json (run by `make ui-vendor` after `npm ci`): for every icon name of the
// Material Design Iconic Font (the `zmdi-` names seed 000's cards use, listed in zmdi-names.txt), the SVG path of
// the Material Design Icons glyph (@mdi/svg, Apache-2.0) of the same name, or of the name OVERRIDES gives; names
// without a counterpart are left out (the UI shows the name's first letters for them).
"use strict";
const fs = require("fs");
const path = require("path");

const OVERRIDES = {  // zmdi name -> mdi name, for the lineage service's default icons and close matches
  "chart": "chart-bar", "collection-image": "image-multiple", "collection-item": "format-list-bulleted",
  "time-restore": "restore", "device-hub": "hub", "labels": "label-multiple", "collection-folder-image": "folder-image",
  "collection-text": "text-box-multiple", "storage": "database", "settings": "cog", "assignment": "clipboard-text",
  "widgets": "widgets", "layers": "layers", "developer-board": "developer-board", "memory": "memory",
};
const svgDir = path.join(__dirname, "node_modules", "@mdi", "svg", "svg");
const names = fs.readFileSync(path.join(__dirname, "zmdi-names.txt"), "utf8").split("\n").filter(Boolean);
const icons = {};
for (const name of names) {
  const file = path.join(svgDir, `${OVERRIDES[name] || name}.svg`);
  if (!fs.existsSync(file)) continue;
  const found = fs.readFileSync(file, "utf8").match(/ d="([^"]+)"/);
  if (found) icons[name] = found[1];
}
fs.writeFileSync(path.join(__dirname, "..", "static", "vendor", "mdi-icons.json"), JSON.stringify(icons) + "\n");
console.log(`mdi-icons.json: ${Object.keys(icons).length} of ${names.length} icon names`);
