// The SQL page's editor: CodeMirror 6 with its SQL language, set up for cdrhouse's
// user SQL (ClickHouse dialect, the logical tables `cdrs` and `daily_summary`).
// Bundled by esbuild into api/web/static/sqleditor.bundle.js (see README.md here);
// the page's own script (static/sqlpage.js) calls `CdrhouseSQLEditor.create(...)`.

import {EditorView, keymap, placeholder} from "@codemirror/view";
import {EditorState, Prec} from "@codemirror/state";
import {basicSetup} from "codemirror";
import {sql, SQLDialect, StandardSQL} from "@codemirror/lang-sql";
import {HighlightStyle, syntaxHighlighting} from "@codemirror/language";
import {closeCompletion, startCompletion} from "@codemirror/autocomplete";
import {tags as t} from "@lezer/highlight";

// ClickHouse words on top of standard SQL (highlighting and keyword completion)
const CH_KEYWORDS = "final prewhere sample array join global any all asof semi anti paste " +
  "ilike limit by offset fetch settings format interval qualify with totals rollup cube " +
  "fill step interpolate window over partition rows range unbounded preceding following " +
  "current row nulls first last collate distinct on using left right inner outer full cross " +
  "union except intersect case when then else end if in not between like is null and or " +
  "asc desc group order having where from select as";
const CH_TYPES = "UInt8 UInt16 UInt32 UInt64 UInt128 UInt256 Int8 Int16 Int32 Int64 Int128 Int256 " +
  "Float32 Float64 Decimal Decimal32 Decimal64 Decimal128 Decimal256 String FixedString " +
  "Date Date32 DateTime DateTime64 UUID IPv4 IPv6 Bool Nullable LowCardinality Array Map " +
  "Tuple Enum8 Enum16";

export const ClickHouse = SQLDialect.define({
  ...StandardSQL.spec,
  keywords: StandardSQL.spec.keywords + " " + CH_KEYWORDS,
  types: CH_TYPES + " " + CH_TYPES.toLowerCase(),
  backslashEscapes: true,
  doubleQuotedStrings: false,
  identifierQuotes: "`\"",
  caseInsensitiveIdentifiers: true,
});

// colours from CSS variables (static/sqlpage.css), so light and dark themes both read well
const highlight = HighlightStyle.define([
  {tag: t.keyword, color: "var(--cm-keyword)", fontWeight: "600"},
  {tag: [t.typeName, t.standard(t.name)], color: "var(--cm-type)"},
  {tag: [t.string, t.special(t.string)], color: "var(--cm-string)"},
  {tag: [t.number, t.bool, t.null], color: "var(--cm-number)"},
  {tag: [t.lineComment, t.blockComment], color: "var(--cm-comment)", fontStyle: "italic"},
  {tag: [t.operator, t.punctuation, t.brace, t.paren], color: "var(--cm-punct)"},
  {tag: t.special(t.name), color: "var(--cm-param)"},
]);

const theme = EditorView.theme({
  "&": {backgroundColor: "var(--panel)", color: "var(--text)", fontSize: "13px",
        border: "1px solid var(--line)", borderRadius: "6px"},
  "&.cm-focused": {outline: "2px solid var(--accent)", outlineOffset: "1px"},
  ".cm-scroller": {fontFamily: "var(--mono)", lineHeight: "1.5", minHeight: "140px"},
  ".cm-content": {caretColor: "var(--text)"},
  ".cm-gutters": {backgroundColor: "var(--head)", color: "var(--muted)", border: "none",
                  borderRadius: "6px 0 0 6px"},
  ".cm-activeLine": {backgroundColor: "var(--cm-active)"},
  ".cm-activeLineGutter": {backgroundColor: "var(--cm-active)"},
  "&.cm-focused .cm-selectionBackground, .cm-selectionBackground, ::selection":
    {backgroundColor: "var(--sel)"},
  ".cm-tooltip": {backgroundColor: "var(--panel)", color: "var(--text)",
                  border: "1px solid var(--line)"},
  ".cm-tooltip-autocomplete > ul > li[aria-selected]": {backgroundColor: "var(--accent)",
                                                        color: "var(--accent-text)"},
  ".cm-completionDetail": {color: "var(--muted)", marginLeft: "8px"},
  ".cm-tooltip-autocomplete > ul > li[aria-selected] .cm-completionDetail": {color: "inherit", opacity: ".85"},
  ".cm-placeholder": {color: "var(--muted)"},
});

// the word being typed, and the tables the query names (whose columns are offered)
function columnSource(tables, functions) {
  const fnOptions = functions.map((f) => ({label: f, type: "function", boost: -2}));
  return (context) => {
    const word = context.matchBefore(/[A-Za-z_][A-Za-z0-9_]*$/);
    const dotted = context.matchBefore(/[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z0-9_]*$/);
    if (dotted) return null;  // `cdrs.` / `alias.`: the SQL language's own source answers
    if (!word && !context.explicit) return null;
    const text = context.state.doc.toString();
    const named = Object.keys(tables).filter((name) => new RegExp("\\b" + name + "\\b", "i").test(text));
    const options = [];
    const seen = new Set();
    for (const name of (named.length ? named : Object.keys(tables))) {
      for (const col of tables[name]) {
        const key = col.label;
        if (seen.has(key)) continue;
        seen.add(key);
        options.push({...col, boost: named.length ? 2 : 0});
      }
    }
    for (const name of Object.keys(tables)) {
      options.push({label: name, type: "class", detail: "table", boost: 1});
    }
    return {from: word ? word.from : context.pos, options: options.concat(fnOptions),
            validFor: /^[A-Za-z0-9_]*$/};
  };
}

/**
 * Make an editor in `parent`.
 *  tables: {cdrs: [{label, detail, info}], daily_summary: [...]} — the caller's visible columns
 *  functions: names the guard allows; nonce: the page's CSP style nonce (CodeMirror's styles)
 *  onRun(): Ctrl/Cmd+Enter; onChange(text)
 */
export function create({parent, doc = "", nonce = "", tables = {}, functions = [],
                        onRun = () => {}, onChange = () => {}, label = "SQL"}) {
  const schema = {};
  for (const name of Object.keys(tables)) schema[name] = tables[name];
  const language = sql({dialect: ClickHouse, schema, upperCaseKeywords: true});
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        EditorView.cspNonce.of(nonce),
        Prec.highest(keymap.of([
          {key: "Mod-Enter", run: (v) => { closeCompletion(v); onRun(); return true; }, preventDefault: true},
        ])),
        basicSetup,
        EditorView.lineWrapping,
        language,
        language.language.data.of({autocomplete: columnSource(tables, functions)}),
        syntaxHighlighting(highlight),
        theme,
        placeholder("SELECT … FROM cdrs WHERE start_time >= {from:DateTime} — Ctrl+Enter runs"),
        EditorView.contentAttributes.of({"aria-label": label}),
        EditorView.updateListener.of((u) => { if (u.docChanged) onChange(u.state.doc.toString()); }),
      ],
    }),
  });
  return {
    view,
    getValue: () => view.state.doc.toString(),
    setValue: (text) => view.dispatch({changes: {from: 0, to: view.state.doc.length, insert: text},
                                       selection: {anchor: text.length}}),
    insert: (text) => { view.dispatch(view.state.replaceSelection(text)); view.focus(); },
    focus: () => view.focus(),
    complete: () => startCompletion(view),
  };
}
