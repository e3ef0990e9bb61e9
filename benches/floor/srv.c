/* The floor of a warm task on this machine: a one-threaded server, run as a container's
 * PID 1, that for each byte read on its unix socket spawns /bin/true (posix_spawn, as the
 * shim does), waits for it and writes the byte back. No framing, no pipes, no workdir wipe,
 * no sweep: what is left is the spawn, the exit and one round trip over a local socket.
 * See floor.sh. */
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
        return 2;
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    unlink(argv[1]);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) {
        perror("bind");
        return 1;
    }
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0)
            continue;
        char b;
        while (read(c, &b, 1) == 1) {
            pid_t pid;
            char *args[] = {"true", 0};
            int st;
            if (posix_spawn(&pid, "/bin/true", 0, 0, args, environ) == 0)
                waitpid(pid, &st, 0);
            else
                b = '!';
            if (write(c, &b, 1) != 1)
                break;
        }
        close(c);
    }
}
