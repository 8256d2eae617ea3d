// Which database failures are worth retrying (lost connections, restarts, serialization failures,
// deadlocks) and the backoff between attempts; everything else is raised at once.
namespace KFlow.Postgres

open System
open System.IO
open System.Net.Sockets
open System.Threading.Tasks
open Npgsql

/// <summary>How a batch is retried after a transient failure.</summary>
/// <remarks>
/// The delay before attempt n+1 is FirstDelay × 2^(n-1), capped at MaxDelay, with ±20% jitter.
/// With the defaults a batch is tried 10 times over about 25 seconds before its Task faults.
/// </remarks>
type RetryOptions = {
    /// How many times a batch is tried in all (1: no retry). Default 10.
    MaxAttempts: int
    /// The delay before the first retry. Default 100 ms.
    FirstDelay: TimeSpan
    /// The longest delay between two attempts. Default 5 seconds.
    MaxDelay: TimeSpan
} with

    /// The defaults: 10 attempts, 100 ms doubling up to 5 s. F#: PgRetry.defaults.
    static member Default = {
        MaxAttempts = 10
        FirstDelay = TimeSpan.FromMilliseconds 100.0
        MaxDelay = TimeSpan.FromSeconds 5.0
    }

/// <summary>A batch could not be written; nothing of it was committed.</summary>
/// <remarks>
/// The message names the table and the server (host, port, database, user: never the password).
/// IsTransient says whether the last failure was one that is retried (the attempts ran out).
/// </remarks>
type PgSinkException(message: string, inner: exn, isTransient: bool) =
    inherit Exception(message, inner)

    /// Whether the last failure was transient (connection lost, server restarting, serialization
    /// failure, deadlock) and the attempts ran out.
    member _.IsTransient = isTransient

/// Classification of failures and the retry loop.
[<RequireQualifiedAccess>]
module PgRetry =

    /// The defaults: 10 attempts, 100 ms doubling up to 5 s.
    let defaults = RetryOptions.Default

    /// Raises ArgumentException when an option is out of range.
    let validate (options: RetryOptions) =
        if options.MaxAttempts < 1 then
            raise (
                ArgumentException(
                    $"RetryOptions.MaxAttempts must be ≥ 1 (1: no retry), not {options.MaxAttempts}.",
                    "options"
                )
            )

        if options.FirstDelay < TimeSpan.Zero || options.MaxDelay < options.FirstDelay then
            raise (
                ArgumentException(
                    "RetryOptions needs 0 ≤ FirstDelay ≤ MaxDelay; set them in UpsertConfig.Retry.",
                    "options"
                )
            )

    /// SQLSTATEs retried besides class 08 (connection exception).
    let private transientStates =
        set [
            "40001" // serialization_failure
            "40P01" // deadlock_detected
            "57P01" // admin_shutdown
            "57P02" // crash_shutdown
            "57P03" // cannot_connect_now (server starting)
            "53300" // too_many_connections
        ]

    /// Whether a failure is transient: retrying the whole transaction may succeed.
    let rec isTransient (error: exn) =
        match error with
        | :? PostgresException as e ->
            e.SqlState.StartsWith "08"
            || transientStates.Contains e.SqlState
            || e.IsTransient
        | :? NpgsqlException as e ->
            e.IsTransient || (not (isNull e.InnerException) && isTransient e.InnerException)
        | :? IOException
        | :? SocketException
        | :? TimeoutException -> true
        | :? AggregateException as e -> e.InnerExceptions |> Seq.exists isTransient
        | _ -> false

    /// Whether a failure means pooled connections may be broken (the server went away).
    let rec connectionLost (error: exn) =
        match error with
        | :? PostgresException as e -> e.SqlState.StartsWith "08" || e.SqlState.StartsWith "57P"
        | :? NpgsqlException as e -> not (isNull e.InnerException) && connectionLost e.InnerException
        | :? IOException
        | :? SocketException -> true
        | _ -> false

    /// The delay before retry number `retry` (1 for the first retry), with ±20% jitter.
    let delay (options: RetryOptions) (retry: int) =
        let exponent = min 30 (retry - 1)

        let baseMs =
            min
                options.MaxDelay.TotalMilliseconds
                (options.FirstDelay.TotalMilliseconds * 2.0 ** float exponent)

        let jitter = 0.8 + 0.4 * Random.Shared.NextDouble()
        TimeSpan.FromMilliseconds(baseMs * jitter)

    /// " after N attempts" when there were more than one, else "": for the messages of describe.
    let afterAttempts (tries: int) =
        if tries > 1 then $" after {tries} attempts" else ""

    /// A describe for run: the PgSinkException "{what} failed after N attempts: {the last error}".
    let failed (what: string) (error: exn) (tries: int) (transient: bool) : exn =
        PgSinkException($"{what} failed{afterAttempts tries}: {error.Message}", error, transient)

    /// <summary>Runs an attempt until it succeeds, a failure is not transient, or attempts run out.</summary>
    /// <param name="options">Retry options.</param>
    /// <param name="onTransient">Called after each transient failure before waiting (e.g. to clear a pool).</param>
    /// <param name="describe">Makes the exception raised at the end from the last error, the number of attempts
    /// and whether that error was transient.</param>
    /// <param name="attempt">One attempt.</param>
    let run
        (options: RetryOptions)
        (onTransient: exn -> unit)
        (describe: exn -> int -> bool -> exn)
        (attempt: unit -> Task)
        : Task =
        task {
            let mutable tries = 0
            let mutable finished = false

            while not finished do
                tries <- tries + 1

                let! outcome = task {
                    try
                        do! attempt ()
                        return None
                    with error ->
                        return Some error
                }

                match outcome with
                | None -> finished <- true
                | Some error when isTransient error && tries < options.MaxAttempts ->
                    onTransient error
                    do! Task.Delay(delay options tries)
                | Some error -> raise (describe error tries (isTransient error))
        }
