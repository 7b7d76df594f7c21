// The chat page served at / by the LLM server: one static document, no build step, no
// external resources. It streams /v1/chat/completions (or /v1/completions when the model has
// no chat template) and shows tokens/s and experts per token from the usage chunk.
#include "deltamoe/serve/llm_server.h"

namespace deltamoe::serve {

const std::string& chat_page_html() {
  // clang-format off
  static const std::string page = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deltamoe chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:52rem;margin:1rem auto;padding:0 1rem;color:#222}
h1{font-size:1.2rem;margin:.2rem 0}#meta{color:#666;font-size:.85rem}
#log{border:1px solid #ccc;border-radius:6px;padding:.6rem;min-height:18rem;max-height:60vh;overflow:auto;background:#fafafa}
.msg{margin:.4rem 0;white-space:pre-wrap}.user{color:#0645ad}.assistant{color:#222}.err{color:#b00}
.role{font-weight:600;margin-right:.4rem}#stats{color:#555;font-size:.85rem;margin:.3rem 0;min-height:1.2em}
form{display:flex;gap:.5rem;margin-top:.5rem}textarea{flex:1;height:3.2rem;font:inherit}
button{font:inherit;padding:0 1rem}label{font-size:.85rem;color:#444}
</style></head><body>
<h1>deltamoe chat</h1><div id="meta">model: <span id="model">…</span></div>
<div id="log"></div><div id="stats"></div>
<form id="f"><textarea id="q" placeholder="Say something (Enter sends, Shift+Enter: new line)"></textarea>
<button id="send" type="submit">Send</button></form>
<div><label>max tokens <input id="max" type="number" value="64" min="1" style="width:5rem"></label>
<label>temperature <input id="temp" type="number" value="0.7" min="0" max="2" step="0.1" style="width:4rem"></label>
<label><input id="plain" type="checkbox"> plain completion</label></div>
<script>
const log=document.getElementById('log'),stats=document.getElementById('stats'),q=document.getElementById('q');
const history=[];let model='';
fetch('/v1/models').then(r=>r.json()).then(j=>{model=j.data[0].id;document.getElementById('model').textContent=model+' (context '+j.data[0].max_model_len+')';});
function add(role,text){const d=document.createElement('div');d.className='msg '+role;
 const r=document.createElement('span');r.className='role';r.textContent=role+':';const t=document.createElement('span');t.className='text';t.textContent=text;
 d.append(r,t);log.append(d);log.scrollTop=log.scrollHeight;return t;}
q.addEventListener('keydown',e=>{if(e.key==='Enter'&&!e.shiftKey){e.preventDefault();document.getElementById('f').requestSubmit();}});
document.getElementById('f').addEventListener('submit',async e=>{e.preventDefault();const text=q.value;if(!text.trim())return;q.value='';
 const plain=document.getElementById('plain').checked;add('user',text);const out=add('assistant','');
 const body={model,stream:true,stream_options:{include_usage:true},max_tokens:+document.getElementById('max').value,temperature:+document.getElementById('temp').value};
 let url='/v1/completions';if(plain){body.prompt=text;}else{history.push({role:'user',content:text});body.messages=history;url='/v1/chat/completions';}
 document.getElementById('send').disabled=true;const t0=performance.now();let first=0,n=0,reply='';
 try{const res=await fetch(url,{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(body)});
  if(!res.ok){const j=await res.json().catch(()=>({}));throw new Error((j.error&&j.error.message)||res.statusText);}
  const rd=res.body.getReader(),dec=new TextDecoder();let buf='';
  for(;;){const {done,value}=await rd.read();if(done)break;buf+=dec.decode(value,{stream:true});let i;
   while((i=buf.indexOf('\n\n'))>=0){const ev=buf.slice(0,i);buf=buf.slice(i+2);if(!ev.startsWith('data: '))continue;const data=ev.slice(6);if(data==='[DONE]')continue;
    const j=JSON.parse(data);if(j.usage){const s=(performance.now()-first)/1000;
     stats.textContent=j.usage.completion_tokens+' tokens, '+(j.usage.completion_tokens>1&&s>0?((j.usage.completion_tokens-1)/s).toFixed(1):'–')+' tokens/s, first token '+((first-t0)/1000).toFixed(2)+' s, '+j.deltamoe.mean_experts_per_token.toFixed(2)+' experts per token';continue;}
    const c=j.choices[0];const piece=plain?c.text:(c.delta&&c.delta.content)||'';if(piece){if(!first)first=performance.now();n++;reply+=piece;out.textContent=reply;log.scrollTop=log.scrollHeight;}}}
  if(!plain)history.push({role:'assistant',content:reply});
 }catch(err){out.textContent='';out.parentElement.className='msg err';out.textContent=String(err.message||err);if(!plain)history.pop();}
 document.getElementById('send').disabled=false;});
</script></body></html>
)HTML";
  // clang-format on
  return page;
}

}  // namespace deltamoe::serve
