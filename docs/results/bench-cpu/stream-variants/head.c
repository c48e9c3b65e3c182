#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#include <time.h>
#include <sys/mman.h>
#include <immintrin.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static inline float dot(const uint16_t*r,const uint16_t*x,int64_t in){__m512 s0=_mm512_setzero_ps(),s1=_mm512_setzero_ps();int64_t i=0;
 for(;i+64<=in;i+=64){s0=_mm512_dpbf16_ps(s0,(__m512bh)_mm512_loadu_si512(r+i),(__m512bh)_mm512_loadu_si512(x+i));s1=_mm512_dpbf16_ps(s1,(__m512bh)_mm512_loadu_si512(r+i+32),(__m512bh)_mm512_loadu_si512(x+i+32));}
 if(i<in)s0=_mm512_dpbf16_ps(s0,(__m512bh)_mm512_loadu_si512(r+i),(__m512bh)_mm512_loadu_si512(x+i));return _mm512_reduce_add_ps(_mm512_add_ps(s0,s1));}
static void head1(const uint16_t*x,const uint16_t*w,float*y,int64_t in,int64_t out){
 #pragma omp parallel for num_threads(2) schedule(static)
 for(int64_t j=0;j<out;++j) y[j]=dot(w+j*in,x,in);}
// each thread: its contiguous share split into S sub-ranges; one row of each per iteration
static void headS(const uint16_t*x,const uint16_t*w,float*y,int64_t in,int64_t out,int S){
 #pragma omp parallel num_threads(2)
 {int t=omp_get_thread_num(),T=omp_get_num_threads(); int64_t a=out*t/T,b=out*(t+1)/T,n=b-a,q=(n+S-1)/S;
  for(int64_t j=0;j<q;++j) for(int s=0;s<S;++s){int64_t r=a+s*q+j; if(r<b) y[r]=dot(w+r*in,x,in);}}}
// 4 rows interleaved at the instruction level: four dot products in one loop
static void head4i(const uint16_t*x,const uint16_t*w,float*y,int64_t in,int64_t out){
 #pragma omp parallel num_threads(2)
 {int t=omp_get_thread_num(),T=omp_get_num_threads(); int64_t a=out*t/T,b=out*(t+1)/T,n=b-a,q=n/4;
  for(int64_t j=0;j<q;++j){const uint16_t*r[4];for(int s=0;s<4;++s)r[s]=w+(a+s*q+j)*in; __m512 acc[4];for(int s=0;s<4;++s)acc[s]=_mm512_setzero_ps();
   for(int64_t i=0;i<in;i+=32){__m512bh xv=(__m512bh)_mm512_loadu_si512(x+i); for(int s=0;s<4;++s)acc[s]=_mm512_dpbf16_ps(acc[s],(__m512bh)_mm512_loadu_si512(r[s]+i),xv);}
   for(int s=0;s<4;++s)y[a+s*q+j]=_mm512_reduce_add_ps(acc[s]);}
  for(int64_t r=a+4*q;r<b;++r)y[r]=dot(w+r*in,x,in);}}
int main(int argc,char**argv){int64_t in=atoi(argv[1]),out=atoi(argv[2]); int copies=atoi(argv[3]);
 size_t sz=in*out*2; uint16_t*w[8]; for(int c=0;c<copies;++c){w[c]=aligned_alloc(2<<20,(sz+(2<<20))&~((size_t)(2<<20)-1)); madvise(w[c],sz,MADV_HUGEPAGE); for(size_t i=0;i<in*out;++i)w[c][i]=0x3c00+(i&0x7f);}
 uint16_t*x=aligned_alloc(64,in*2); for(int i=0;i<in;++i)x[i]=0x3c00; float*y=malloc(out*4),*y1=malloc(out*4);
 const char*nm[]={"1 row/thread","2 subranges","4 subranges","8 subranges","4 interleaved"}; double tt[5]={0}; int R=10;
 for(int r=0;r<R;++r)for(int v=0;v<5;++v){uint16_t*ww=w[(r*5+v)%copies]; double t=now();
   if(v==0)head1(x,ww,y,in,out);else if(v==4)head4i(x,ww,y,in,out);else headS(x,ww,y,in,out,v==1?2:v==2?4:8); t=now()-t; if(r)tt[v]+=t;
   if(v==0)memcpy(y1,y,out*4);else for(int j=0;j<out;++j)if(y[j]!=y1[j]){printf("mismatch v%d j%d\n",v,j);break;}}
 for(int v=0;v<5;++v)printf("%-14s %.3f ms  %.1f GB/s\n",nm[v],tt[v]/(R-1)*1e3,sz/(tt[v]/(R-1))/1e9);}
