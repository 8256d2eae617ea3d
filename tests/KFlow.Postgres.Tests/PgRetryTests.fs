// Tests for src/KFlow.Postgres/PgRetry.fs: which failures are retried, how long the backoff waits, and
// that the retry loop stops at a permanent failure or when the attempts run out.
module KFlow.Postgres.Tests.PgRetryTests

open System
open System.IO
open System.Net.Sockets
open System.Threading.Tasks
open Expecto
open Npgsql
open KFlow.Postgres

let private quick = {
    PgRetry.defaults with
        FirstDelay = TimeSpan.FromMilliseconds 1.0
        MaxDelay = TimeSpan.FromMilliseconds 2.0
        MaxAttempts = 4
}

let private postgresError (sqlState: string) =
    PostgresException("message", "ERROR", "ERROR", sqlState)

/// Runs PgRetry with `quick` on an attempt that always fails with the SQLSTATE `code`; returns how
/// many attempts were made and the exception raised, whose message is "<attempts> <transient>".
let private alwaysFailing (code: string) =
    let mutable calls = 0

    let attempt () : Task =
        calls <- calls + 1
        Task.FromException(postgresError code)

    let e =
        Expect.throwsC
            (fun () ->
                (PgRetry.run quick ignore (fun e n t -> exn ($"{n} {t}", e)) attempt)
                    .GetAwaiter()
                    .GetResult())
            id

    calls, e

let tests =
    testList "PgRetry" [
        test "lost connections, restarts, serialization failures and deadlocks are transient" {
            for state in [ "40001"; "40P01"; "57P01"; "57P03"; "08006"; "08001" ] do
                Expect.isTrue (PgRetry.isTransient (postgresError state)) $"{state} is transient"

            Expect.isTrue (PgRetry.isTransient (NpgsqlException("lost", IOException "reset"))) "I/O error"
            Expect.isTrue (PgRetry.isTransient (SocketException 111)) "refused"
        }

        test "data and schema errors are not transient" {
            for state in [ "23502"; "23505"; "22P02"; "42P01"; "42703"; "42501" ] do
                Expect.isFalse (PgRetry.isTransient (postgresError state)) $"{state} is not transient"

            Expect.isFalse (PgRetry.isTransient (InvalidCastException "bad value")) "a bad value"
        }

        test "the backoff doubles from the first delay and stops at the maximum" {
            let options = {
                PgRetry.defaults with
                    FirstDelay = TimeSpan.FromMilliseconds 100.0
                    MaxDelay = TimeSpan.FromSeconds 1.0
            }

            for retry, expected in [ 1, 100.0; 2, 200.0; 3, 400.0; 4, 800.0; 5, 1000.0; 40, 1000.0 ] do
                let delay = (PgRetry.delay options retry).TotalMilliseconds

                Expect.isTrue
                    (delay >= 0.8 * expected && delay <= 1.2 * expected)
                    $"retry {retry}: {delay} ms"
        }

        test "a transient failure is retried until the attempt succeeds" {
            let mutable calls = 0

            let attempt () : Task =
                calls <- calls + 1

                if calls < 3 then
                    Task.FromException(postgresError "40001")
                else
                    Task.CompletedTask

            (PgRetry.run quick ignore (fun e _ _ -> e) attempt).Wait()
            Expect.equal calls 3 "two failures, then success"
        }

        test "a permanent failure is raised at once" {
            let calls, e = alwaysFailing "23505"
            Expect.equal calls 1 "no retry"
            Expect.equal e.Message "1 False" "described after one attempt, not transient"
        }

        test "transient failures stop after MaxAttempts" {
            let calls, e = alwaysFailing "57P01"
            Expect.equal calls 4 "MaxAttempts"
            Expect.equal e.Message "4 True" "described after four attempts, transient"
        }

        test "retry options out of range are refused" {
            Expect.throwsT<ArgumentException>
                (fun () -> PgRetry.validate { quick with MaxAttempts = 0 })
                "MaxAttempts 0"

            Expect.throwsT<ArgumentException>
                (fun () -> PgRetry.validate { quick with MaxDelay = TimeSpan.Zero })
                "MaxDelay below FirstDelay"
        }
    ]
