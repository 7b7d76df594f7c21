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
html,body{height:100%}
body{font-family:system-ui,sans-serif;max-width:52rem;margin:0 auto;padding:1rem;box-sizing:border-box;color:#222;display:flex;flex-direction:column}
h1{font-size:1.2rem;margin:0 0 .2rem}#meta{color:#666;font-size:.85rem;margin-bottom:.5rem}
#log{flex:1;min-height:12rem;border:1px solid #ccc;border-radius:6px;padding:.5rem;overflow:auto;background:#fafafa}
.msg{margin:.3rem 0;padding:.3rem .5rem;border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere}
.user{color:#0645ad;background:#e9f0fc}.assistant{background:#fff;border:1px solid #e4e4e4}.err{color:#b00;background:#fdecec}
.role{font-weight:600;margin-right:.4rem}.empty .text::after{content:'(empty reply)';color:#888}.streaming .text::after{content:'\258d';color:#888}.stats{color:#666;font-size:.8rem;margin-top:.2rem;white-space:normal}
form{display:flex;gap:.5rem;margin-top:.5rem}textarea{flex:1;height:3.2rem;font:inherit;padding:.3rem;box-sizing:border-box;resize:vertical}
button{font:inherit;padding:0 1rem}#opts{display:flex;flex-wrap:wrap;gap:1rem;margin-top:.4rem}label{font-size:.85rem;color:#444}
</style></head><body>
<h1>deltamoe chat</h1><div id="meta">model: <span id="model">…</span></div>
<div id="log"></div>
<form id="f"><textarea id="q" placeholder="Say something (Enter sends, Shift+Enter: new line)"></textarea>
<button id="send" type="submit">Send</button></form>
<div id="opts"><label>max tokens <input id="max" type="number" value="64" min="1" style="width:5rem"></label>
<label>temperature <input id="temp" type="number" value="0.7" min="0" max="2" step="0.1" style="width:4rem"></label>
<label><input id="plain" type="checkbox"> plain completion</label></div>
<script>
// Streams /v1/chat/completions (or /v1/completions with "plain completion") as server-sent
// events; each reply gets a line of stats (class stats). URL parameters: max_tokens,
// temperature, plain=1 preset the options; each q=TEXT (repeatable) is sent on load, one after
// the other's reply. <body data-replies> counts the finished replies (data-busy while one
// streams), for scripts that drive the page.
const $=id=>document.getElementById(id),log=$('log'),q=$('q'),body=document.body;
const turns=[];let model='',busy=false,replies=0;
const ready=fetch('/v1/models').then(r=>r.json()).then(j=>{model=j.data[0].id;
  $('model').textContent=model+' (context '+j.data[0].max_model_len+')';})
 .catch(e=>{$('model').textContent='unavailable: '+(e.message||e);});
function add(role,text){const d=document.createElement('div');d.className='msg '+role;
 const r=document.createElement('span');r.className='role';r.textContent=(role==='err'?'error':role)+':';
 const t=document.createElement('span');t.className='text';t.textContent=text;
 d.append(r,t);log.append(d);log.scrollTop=log.scrollHeight;return t;}
const secs=ms=>(ms/1000).toFixed(2)+' s';
function show(msg,u,ext,t0,first,end,finish){const n=u.completion_tokens,s=[n+(n===1?' token':' tokens')+' in '+secs(end-t0)];
 // Decode rate: the tokens after the first over the time since the first arrived (over the
 // whole reply when they came too close together to time, e.g. in one network read).
 if(n>1&&first&&end-first>=50)s.push(((n-1)*1000/(end-first)).toFixed(1)+' tokens/s');
 else if(n>0&&end>t0)s.push((n*1000/(end-t0)).toFixed(1)+' tokens/s');
 if(first)s.push('first token '+secs(first-t0));
 if(ext&&typeof ext.mean_experts_per_token==='number')s.push(ext.mean_experts_per_token.toFixed(2)+' experts per token');
 if(finish==='length')s.push('stopped at max tokens');
 const d=document.createElement('div');d.className='stats';d.textContent=s.join(' · ');msg.append(d);log.scrollTop=log.scrollHeight;}
async function send(text){busy=true;body.dataset.busy='1';$('send').disabled=true;await ready;
 const plain=$('plain').checked;add('user',text);const out=add('assistant',''),om=out.parentElement;om.classList.add('streaming');
 const req={model,stream:true,stream_options:{include_usage:true}},max=$('max').value,temp=$('temp').value;
 if(max!=='')req.max_tokens=+max;if(temp!=='')req.temperature=+temp;
 let url='/v1/completions';if(plain){req.prompt=text;}else{turns.push({role:'user',content:text});req.messages=turns;url='/v1/chat/completions';}
 const t0=performance.now();let first=0,reply='',usage=null,ext=null,finish=null,done=false;
 try{const res=await fetch(url,{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(req)});
  if(!res.ok){const j=await res.json().catch(()=>({}));throw new Error(res.status+': '+((j.error&&j.error.message)||res.statusText));}
  const rd=res.body.getReader(),dec=new TextDecoder();let buf='';
  for(;;){const {done:eof,value}=await rd.read();if(eof)break;buf+=dec.decode(value,{stream:true}).replace(/\r/g,'');let i;
   while((i=buf.indexOf('\n\n'))>=0){const ev=buf.slice(0,i);buf=buf.slice(i+2);
    // An event's data is its data: lines joined; comments and other fields are skipped.
    const data=ev.split('\n').filter(l=>l.startsWith('data:')).map(l=>l.slice(l[5]===' '?6:5)).join('\n');
    if(!data)continue;if(data==='[DONE]'){done=true;continue;}
    const j=JSON.parse(data);if(j.error)throw new Error(j.error.message||'server error');
    if(j.usage){usage=j.usage;ext=j.deltamoe;}
    const c=j.choices&&j.choices[0];if(!c)continue;if(c.finish_reason)finish=c.finish_reason;
    const piece=plain?c.text:c.delta&&c.delta.content;
    if(piece){if(!first)first=performance.now();reply+=piece;out.textContent=reply;log.scrollTop=log.scrollHeight;}}}
  if(finish==='error')throw new Error('the server failed while generating');
  if(!done)throw new Error('the stream ended early');
  const end=performance.now();if(usage)show(om,usage,ext,t0,first,end,finish);
  if(!reply)om.classList.add('empty');
  if(!plain)turns.push({role:'assistant',content:reply});
 }catch(err){const msg=String(err.message||err);if(reply)add('err',msg);
  else{om.className='msg err';om.firstChild.textContent='error:';out.textContent=msg;}
  if(!plain)turns.pop();}
 om.classList.remove('streaming');busy=false;delete body.dataset.busy;body.dataset.replies=++replies;$('send').disabled=false;}
q.addEventListener('keydown',e=>{if(e.key==='Enter'&&!e.shiftKey&&!e.isComposing){e.preventDefault();$('f').requestSubmit();}});
$('f').addEventListener('submit',e=>{e.preventDefault();const text=q.value;if(busy||!text.trim())return;q.value='';send(text);});
const P=new URLSearchParams(location.search);
if(P.has('max_tokens'))$('max').value=P.get('max_tokens');if(P.has('temperature'))$('temp').value=P.get('temperature');
if(P.get('plain')==='1')$('plain').checked=true;
(async()=>{for(const t of P.getAll('q'))if(t.trim())await send(t);})();
</script></body></html>
)HTML";
  // clang-format on
  return page;
}

}  // namespace deltamoe::serve
