(function(){
  var thumbs=JSON.parse(document.getElementById('thumbs').textContent);
  document.querySelectorAll('img[data-thumb]').forEach(function(img){img.src=thumbs[img.getAttribute('data-thumb')];});
  function key(cell){var v=cell.getAttribute('data-sort');if(v===null)v=cell.textContent.trim();
    var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?{n:n}:{s:v.toLowerCase()};}
  function cmp(a,b){if(a.n!==undefined&&b.n!==undefined)return a.n-b.n;
    if(a.n!==undefined)return -1;if(b.n!==undefined)return 1;return a.s<b.s?-1:a.s>b.s?1:0;}
  function sortBy(th,dir){var table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(r1,r2){var a=key(r1.cells[i]),b=key(r2.cells[i]),ea=a.s==='',eb=b.s==='';
      if(ea||eb)return ea===eb?0:(ea?1:-1);return dir*cmp(a,b);});  /* empty cells last either way */
    rows.forEach(function(r){body.appendChild(r);});
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.classList.remove('sorted-asc','sorted-desc');});
    th.classList.add(dir>0?'sorted-asc':'sorted-desc');th.setAttribute('data-dir',dir);}
  document.querySelectorAll('table.sortable th').forEach(function(th){
    th.title='click to sort';
    th.addEventListener('click',function(){sortBy(th,th.getAttribute('data-dir')==='1'?-1:1);});
    if(th.hasAttribute('data-initial-sort'))sortBy(th,parseInt(th.getAttribute('data-initial-sort'),10));});
  function mark(){var imgs=document.images,ok=0,plots=0;
    for(var i=0;i<imgs.length;i++){var good=imgs[i].complete&&imgs[i].naturalWidth>0;
      imgs[i].setAttribute('data-loaded',good?'1':'0');if(good){ok++;if(imgs[i].classList.contains('plot'))plots++;}}
    document.body.setAttribute('data-images-total',imgs.length);
    document.body.setAttribute('data-images-loaded',ok);
    document.body.setAttribute('data-plots-loaded',plots);}
  if(document.readyState==='complete')mark();else window.addEventListener('load',mark);
})();
