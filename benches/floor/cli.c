/* The client of srv.c: N round trips one after another, then p50/p90/p99 in ms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET N\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[2]);
    if (n < 1) {
        fprintf(stderr, "N must be at least 1, not %s\n", argv[2]);
        return 2;
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    int tries = 0;
    while (connect(s, (struct sockaddr *)&a, sizeof a)) {
        if (++tries > 250) { /* 5 s */
            perror("connect");
            return 1;
        }
        usleep(20000);
    }
    double *lat = malloc(n * sizeof *lat);
    if (!lat) {
        perror("malloc");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char b = 'x';
        double t = now_ms();
        if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1 || b != 'x') {
            fprintf(stderr, "round trip %d failed\n", i);
            return 1;
        }
        lat[i] = now_ms() - t;
    }
    qsort(lat, n, sizeof *lat, by_value);
    printf("p50 %.3f p90 %.3f p99 %.3f ms (%d spawns)\n", lat[n / 2], lat[n * 9 / 10],
           lat[n * 99 / 100], n);
    return 0;
}
