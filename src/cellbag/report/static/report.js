(function(){
  // index.html#open-all opens every collapsed block (for printing, and the browser check)
  if(location.hash==='#open-all'){document.querySelectorAll('details').forEach(function(d){d.open=true;});}
  function val(td){var v=td.getAttribute('data-value');return v===null?td.textContent.trim():v;}
  document.querySelectorAll('table.sortable').forEach(function(t){
    t.querySelectorAll('th[data-sort]').forEach(function(th,i){
      th.addEventListener('click',function(){
        var num=th.getAttribute('data-sort')==='num', asc=th.getAttribute('data-dir')!=='asc';
        t.querySelectorAll('th').forEach(function(o){o.removeAttribute('data-dir');});
        th.setAttribute('data-dir',asc?'asc':'desc');
        var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){
          var x=val(a.cells[i]),y=val(b.cells[i]);
          if(num){x=parseFloat(x);y=parseFloat(y);x=isNaN(x)?-Infinity:x;y=isNaN(y)?-Infinity:y;}
          return (x<y?-1:x>y?1:0)*(asc?1:-1);
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  document.querySelectorAll('.controls').forEach(function(c){
    var t=document.getElementById(c.getAttribute('data-for'));
    var txt=c.querySelector('.f-text'), sel=c.querySelector('.f-sel'), cnt=c.querySelector('.count');
    function apply(){
      var q=txt.value.trim().toLowerCase(), s=sel.value, n=0;
      Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
        var ok=(!q||r.getAttribute('data-patient').toLowerCase().indexOf(q)>=0)&&
          (s==='all'||(s==='wrong'&&r.getAttribute('data-correct')==='0')||
           (s==='right'&&r.getAttribute('data-correct')==='1')||
           (s==='y1'&&r.getAttribute('data-label')==='1')||(s==='y0'&&r.getAttribute('data-label')==='0'));
        r.style.display=ok?'':'none'; if(ok)n++;
      });
      cnt.textContent=n+' of '+t.tBodies[0].rows.length+' patients';
    }
    txt.addEventListener('input',apply); sel.addEventListener('change',apply); apply();
  });
  window.addEventListener('load',function(){
    var imgs=document.images, broken=[];
    for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)broken.push(imgs[i].getAttribute('src'));}
    var el=document.getElementById('img-check');
    if(!el)return;
    el.setAttribute('data-total',String(imgs.length));
    el.setAttribute('data-broken',JSON.stringify(broken));
    var doc=document.documentElement;
    el.setAttribute('data-page',doc.scrollWidth+'x'+doc.scrollHeight);
    el.setAttribute('data-done','1');
    if(broken.length){el.hidden=false;el.textContent=broken.length+' image(s) failed to load: '+broken.slice(0,5).join(', ');}
  });
})();
