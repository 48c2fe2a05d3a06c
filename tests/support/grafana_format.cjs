// Grafana's own display code (@grafana/data, as the dashboard's Grafana ships it) formats
// values as a stat panel would: reads [{unit, decimals, value}, ...] as JSON on stdin,
// prints the texts as a JSON array. @grafana/data expects a browser: a minimal window.
globalThis.window = globalThis;
globalThis.navigator = { language: "en-US", languages: ["en-US"] };
globalThis.document = {
  createElement: () => ({ getContext: () => null }),
  documentElement: {},
};
const { getDisplayProcessor, createTheme, FieldType, formattedValueToString } =
  require("@grafana/data");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const theme = createTheme();
  const out = JSON.parse(input).map(({ unit, decimals, value }) => {
    const field = {
      name: "value",
      type: FieldType.number,
      config: { unit, decimals },
      values: [value],
    };
    return formattedValueToString(getDisplayProcessor({ field, theme })(value));
  });
  process.stdout.write(JSON.stringify(out));
});
