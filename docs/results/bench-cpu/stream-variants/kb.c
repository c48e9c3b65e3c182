// standalone: Qwen2.5-0.5B bf16 decoder shapes, 24 layers, 50% random keep; kept-row read rates of kernel variants
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#include <time.h>
#include <sys/mman.h>
#define LINE 64
static inline float lo_bf16(uint32_t w){uint32_t u=w<<16;float f;memcpy(&f,&u,4);return f;}
static inline float hi_bf16(uint32_t w){uint32_t u=w&0xffff0000u;float f;memcpy(&f,&u,4);return f;}
static int PF_DIST=1, PF_ON=1, PF_HINT=1, READONLY=0, SPLIT=1;
static void add_rows(const uint16_t *wt,int64_t ld,int64_t w,const float*v,const int64_t*idx,int64_t k,int64_t k1,float*acc){
  int64_t h=w/2; float*ae=acc,*ao=acc+h; memset(ae,0,w*4);
  int64_t k0=k, span=(k1-k)/SPLIT, per=8/SPLIT, kend=k+span; // SPLIT sub-ranges of span rows; per rows of each a pass
  for(;k+per<=kend;k+=per){
    const uint32_t*r[8]; for(int u=0;u<8;++u) r[u]=(const uint32_t*)(wt+idx[k+(u/per)*span+u%per]*ld);
    const uint32_t*nx[8]; for(int u=0;u<8;++u){int64_t q=k+per*PF_DIST+(u/per)*span+u%per; nx[u]=(const uint32_t*)(wt+idx[q<k1?q:k1-1]*ld);}
    float a0=v[k],a1=v[k+1],a2=v[k+2],a3=v[k+3],a4=v[k+4],a5=v[k+5],a6=v[k+6],a7=v[k+7];
    const uint32_t *r0=r[0],*r1=r[1],*r2=r[2],*r3=r[3],*r4=r[4],*r5=r[5],*r6=r[6],*r7=r[7];
    for(int64_t jb=0;jb<h;jb+=LINE/4){
      int64_t je=jb+LINE/4<h?jb+LINE/4:h;
      if(PF_ON){ if(PF_HINT==1) for(int u=0;u<8;++u) __builtin_prefetch(nx[u]+jb,0,1); else for(int u=0;u<8;++u) __builtin_prefetch(nx[u]+jb,0,3);}
      if(READONLY){
        _Pragma("omp simd") for(int64_t j=jb;j<je;++j){ uint32_t x=r0[j]^r1[j]^r2[j]^r3[j]^r4[j]^r5[j]^r6[j]^r7[j]; ae[j]+=lo_bf16(x);} 
      } else {
      _Pragma("omp simd") for(int64_t j=jb;j<je;++j){
        uint32_t w0=r0[j],w1=r1[j],w2=r2[j],w3=r3[j],w4=r4[j],w5=r5[j],w6=r6[j],w7=r7[j];
        ae[j]+=((a0*lo_bf16(w0)+a1*lo_bf16(w1))+(a2*lo_bf16(w2)+a3*lo_bf16(w3)))+((a4*lo_bf16(w4)+a5*lo_bf16(w5))+(a6*lo_bf16(w6)+a7*lo_bf16(w7)));
        ao[j]+=((a0*hi_bf16(w0)+a1*hi_bf16(w1))+(a2*hi_bf16(w2)+a3*hi_bf16(w3)))+((a4*hi_bf16(w4)+a5*hi_bf16(w5))+(a6*hi_bf16(w6)+a7*hi_bf16(w7)));
      }}
    }
  }
  int64_t done=k-k0;
  for(int sp=0;sp<SPLIT;++sp) for(int64_t kk=k0+sp*span+done; kk<(sp==SPLIT-1?k1:k0+(sp+1)*span); ++kk){const uint32_t*r0=(const uint32_t*)(wt+idx[kk]*ld);float a0=v[kk];for(int64_t j=0;j<h;++j){ae[j]+=a0*lo_bf16(r0[j]);ao[j]+=a0*hi_bf16(r0[j]);}}
  return;
  for(;k<k1;++k){const uint32_t*r0=(const uint32_t*)(wt+idx[k]*ld);float a0=v[k];for(int64_t j=0;j<h;++j){ae[j]+=a0*lo_bf16(r0[j]);ao[j]+=a0*hi_bf16(r0[j]);}}
}
typedef struct{int64_t in,out;uint16_t*w;} L;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int nl=24; int64_t shp[4][2]={{896,1152},{896,896},{896,9728},{4864,896}};
  L lay[96]; size_t tot=0;
  for(int l=0;l<nl;++l)for(int s=0;s<4;++s){L*x=&lay[l*4+s];x->in=shp[s][0];x->out=shp[s][1];size_t n=x->in*x->out; size_t sz=((n*2+(2<<20)-1)/(2<<20))*(2<<20); x->w=aligned_alloc(2<<20,sz); madvise(x->w,sz,MADV_HUGEPAGE); for(size_t i=0;i<n;++i)x->w[i]=(uint16_t)(0x3c00+(i*2654435761u>>20&0xff)); tot+=n*2;}
  float*acc=aligned_alloc(64,2*9728*4*2); int64_t*idx=malloc(8*5000); float*val=malloc(4*5000);
  unsigned seed=1; double best[8]={0}; const char*names[]={"pf1 t1","pf1 t0","split2 t1","split2 t0","split4 t1","split4 t0"};
  int cfg[][5]={{1,1,1,0,1},{1,1,3,0,1},{1,1,1,0,2},{1,1,3,0,2},{1,1,1,0,4},{1,1,3,0,4}};
  int nc=6, rounds=atoi(argc>1?argv[1]:"7");
  double sum[8]={0}; double kb[8]={0}; double st[8][4]={{0}}, sb[8][4]={{0}};
  for(int r=0;r<rounds;++r) for(int c=0;c<nc;++c){
    PF_DIST=cfg[c][0];PF_ON=cfg[c][1];PF_HINT=cfg[c][2];READONLY=cfg[c][3];SPLIT=cfg[c][4];
    double bytes=0,t0=now();
    for(int l=0;l<nl*4;++l){L*x=&lay[l];int64_t nnz=0;for(int64_t i=0;i<x->in;++i){seed=seed*1103515245+12345; if((seed>>16)&1){idx[nnz]=i;val[nnz]=0.01f;nnz++;}}
      bytes+=nnz*x->out*2.0; double tl=now();
      #pragma omp parallel num_threads(2)
      {int t=omp_get_thread_num();int64_t k=nnz*t/2,k1=nnz*(t+1)/2; add_rows(x->w,x->out,x->out,val,idx,k,k1,acc+t*9728);}
      if(r>0){st[c][l%4]+=now()-tl; sb[c][l%4]+=nnz*x->out*2.0;}
    }
    double dt=now()-t0; if(r>0){sum[c]+=dt;kb[c]+=bytes;}
  }
  for(int c=0;c<nc;++c){ printf("%-14s %.2f ms/step  %.1f GB/s |",names[c],sum[c]/(rounds-1)*1e3,kb[c]/sum[c]/1e9); for(int q=0;q<4;++q)printf(" %s %.2f ms %.1f GB/s;",q==0?"qkv":q==1?"o":q==2?"gateup":"down",st[c][q]/(rounds-1)*1e3,sb[c][q]/st[c][q]/1e9); printf("\n");}
  // sequential probe
  double t0=now(); double s=0; for(int r=0;r<3;++r) for(int l=0;l<nl*4;++l){L*x=&lay[l];size_t n=x->in*x->out;
    #pragma omp parallel for num_threads(2) reduction(+:s)
    for(size_t c=0;c<n;c+=4096){size_t e=c+4096<n?c+4096:n;float q=0;_Pragma("omp simd reduction(+:q)")for(size_t j=c;j<e;++j)q+=lo_bf16(x->w[j]);s+=q;}}
  double dt=now()-t0; printf("dense seq read %.1f GB/s (%g)\n",3*tot/dt/1e9,s);
  return 0;}
