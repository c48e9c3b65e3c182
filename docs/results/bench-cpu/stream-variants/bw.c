#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#include <time.h>
#include <sys/mman.h>
#include <immintrin.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
// read n bytes split among T threads; each thread's share read as S interleaved sub-streams, prefetch PF bytes ahead
static double run(const char*buf,size_t n,int T,int S,int PF){
  double tot=0;
  #pragma omp parallel num_threads(T) reduction(+:tot)
  {int t=omp_get_thread_num(); size_t a=n/T*t, b=a+n/T; size_t len=(b-a)/S; __m512 acc[8]; for(int i=0;i<8;++i)acc[i]=_mm512_setzero_ps();
   for(size_t o=0;o<len;o+=64){ for(int s=0;s<S;++s){const char*p=buf+a+s*len+o; if(PF)_mm_prefetch(p+PF,_MM_HINT_T0); acc[s&7]=_mm512_add_ps(acc[s&7],_mm512_load_ps((const float*)p));}}
   __m512 z=acc[0];for(int i=1;i<8;++i)z=_mm512_add_ps(z,acc[i]); tot+=_mm512_reduce_add_ps(z);}
  return tot;}
int main(){size_t n=1ull<<30; char*buf=aligned_alloc(2<<20,n); madvise(buf,n,MADV_HUGEPAGE); memset(buf,0,n);
  int cfg[][3]={{2,1,0},{2,1,256},{2,1,1024},{2,1,4096},{2,2,0},{2,4,0},{2,4,1024},{2,8,0},{1,1,0},{1,4,1024},{2,1,0}};
  for(int c=0;c<11;++c){double best=1e9; for(int r=0;r<5;++r){double t=now(); volatile double s=run(buf,n,cfg[c][0],cfg[c][1],cfg[c][2]); t=now()-t; if(t<best)best=t;}
    printf("threads %d streams/thread %d prefetch %5d B: %.1f GB/s\n",cfg[c][0],cfg[c][1],cfg[c][2],n/best/1e9);}
}
