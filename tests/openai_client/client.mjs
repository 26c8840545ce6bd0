// The official openai npm client against a running `strata serve`.
// Usage: node client.mjs BASE_URL MODEL_ID [API_KEY]
// Prints one line per check and "ALL OK" at the end; exits non-zero on failure.
import OpenAI from "openai";

const [baseURL, model, apiKey = "unused"] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });

function check(cond, what) {
  if (!cond) {
    console.error("FAIL: " + what);
    process.exit(1);
  }
  console.log("ok: " + what);
}

const models = await client.models.list();
check(models.data.some((m) => m.id === model), "models.list has " + model);

const done = await client.completions.create({ model, prompt: "Hello there, general", max_tokens: 8, temperature: 0 });
check(typeof done.choices[0].text === "string", "completion text");
check(done.usage.completion_tokens >= 1 && done.usage.prompt_tokens > 0, "completion usage");

let streamed = "";
let finish = null;
const stream = await client.completions.create({ model, prompt: "Hello there, general", max_tokens: 8, temperature: 0, stream: true });
for await (const chunk of stream) {
  if (chunk.choices.length > 0) {
    streamed += chunk.choices[0].text ?? "";
    finish = chunk.choices[0].finish_reason ?? finish;
  }
}
check(streamed === done.choices[0].text, "streamed completion equals the non-streamed one");
check(finish === done.choices[0].finish_reason, "stream finish_reason " + finish);

const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Say something." },
];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
check(chat.choices[0].message.role === "assistant", "chat message role");
check(chat.usage.prompt_tokens_details.cached_tokens >= 0, "chat usage cached_tokens");

let chatText = "";
let usage = null;
const chatStream = await client.chat.completions.create({
  model, messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of chatStream) {
  if (chunk.choices.length > 0) chatText += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
check(chatText === chat.choices[0].message.content, "streamed chat equals the non-streamed one");
check(usage !== null && usage.completion_tokens === chat.usage.completion_tokens, "stream usage chunk");

try {
  await client.chat.completions.create({ model: "no-such-model", messages, max_tokens: 4 });
  check(false, "unknown model is refused");
} catch (e) {
  check(e.status === 404 && e.error?.code === "model_not_found", "unknown model gives 404 model_not_found");
}
console.log("ALL OK");
