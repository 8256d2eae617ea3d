// The throwaway PostgreSQL server for tests and demos: `Postgres.start ()` gives a running server in a
// temp directory (or the one named by KFLOW_TEST_PG), with Stop/Start/Restart for fault tests.
namespace KFlow.Testing

open System
open System.Threading.Tasks
open Npgsql
open KFlow.Testing.PostgresTools

/// <summary>A running PostgreSQL server for tests: a throwaway cluster, or an external one.</summary>
/// <remarks>
/// A throwaway server lives in its own temp directory, listens on a loopback port and trusts every
/// local connection (superuser <c>postgres</c>, database <c>postgres</c>). Disposing it stops the
/// server and deletes the directory; so does the end of the process if a test forgets to.
/// An external server (KFLOW_TEST_PG) is used as is: it cannot be stopped, and disposing it does nothing.
/// Members are thread-safe.
/// </remarks>
[<Sealed>]
type PostgresServer
    internal (connectionString: string, port: int, cluster: PostgresCluster.Cluster option, timeout: TimeSpan)
    =
    let gate = obj ()
    let mutable running = true
    let mutable disposed = false
    let mutable onProcessExit: EventHandler option = None

    let throwawayOnly (operation: string) =
        match cluster with
        | Some cluster -> cluster
        | None ->
            invalidOp
                $"{operation} needs a throwaway server, but this one comes from {ConnectionVariable}. Fault tests \
                  need a throwaway server: start it with {{ PostgresOptions.defaults with AllowExternalServer = false }} \
                  (C#: PostgresOptions.Default.WithAllowExternalServer(false)), or unset {ConnectionVariable}."

    let checkNotDisposed () =
        if disposed then
            raise (
                ObjectDisposedException(nameof PostgresServer, "This PostgreSQL server has been disposed.")
            )

    /// Drops pooled connections to this server: after a stop they are all broken.
    let clearPool () =
        use connection = new NpgsqlConnection(connectionString)
        NpgsqlConnection.ClearPool connection

    let cleanup () =
        match cluster with
        | None -> []
        | Some cluster ->
            let stopProblems =
                if running then
                    match PostgresCluster.stop PostgresCluster.Immediate timeout cluster with
                    | Ok() -> []
                    | Error message ->
                        try
                            PostgresCluster.kill cluster
                            []
                        with e -> [ message; $"Killing the postmaster failed too: {e.Message}" ]
                else
                    []

            running <- false
            clearPool ()

            let deleteProblems =
                try
                    PostgresCluster.delete cluster
                    []
                with e -> [ $"Could not delete {cluster.Root}: {e.Message}" ]

            stopProblems @ deleteProblems

    /// The connection string of the server's `postgres` database as its superuser (Npgsql syntax).
    member _.ConnectionString = connectionString

    /// The TCP port the server listens on (for an external server, the one in its connection string).
    member _.Port = port

    /// The cluster's data directory; null for an external server.
    member _.DataDirectory: string =
        match cluster with
        | Some cluster -> cluster.DataDirectory
        | None -> null

    /// Whether this server is a throwaway cluster this object owns (false: it comes from KFLOW_TEST_PG).
    member _.IsThrowaway = cluster.IsSome

    /// Whether the server is running (an external server is assumed to be).
    member _.IsRunning = lock gate (fun () -> running)

    /// The postmaster's process id while running; None otherwise or for an external server.
    member internal _.PostmasterProcessId =
        cluster |> Option.bind PostgresCluster.postmasterProcessId

    /// <summary>Stops the server (fast shutdown: open sessions are ended). Does nothing if already stopped.</summary>
    /// <remarks>
    /// Connections fail until Start or Restart; data survives. Npgsql's pool for ConnectionString is
    /// cleared. Raises InvalidOperationException for an external server.
    /// </remarks>
    member _.Stop() =
        lock gate (fun () ->
            checkNotDisposed ()
            let cluster = throwawayOnly "Stop"

            if running then
                match PostgresCluster.stop PostgresCluster.Fast timeout cluster with
                | Ok() ->
                    running <- false
                    clearPool ()
                | Error message -> invalidOp $"Could not stop the PostgreSQL server: {message}")

    /// <summary>Starts a stopped server again on the same port and waits until it accepts connections.</summary>
    /// <remarks>Does nothing if it is running. Raises InvalidOperationException for an external server.</remarks>
    member _.Start() =
        lock gate (fun () ->
            checkNotDisposed ()
            let cluster = throwawayOnly "Start"

            if not running then
                match PostgresCluster.start port timeout cluster with
                | Ok() -> running <- true
                | Error message -> invalidOp $"Could not start the PostgreSQL server again: {message}")

    /// Stops the server and starts it again (same port, same data). Raises for an external server.
    member this.Restart() =
        lock gate (fun () ->
            this.Stop()
            this.Start())

    /// Stops the server at once and deletes its directory. Does nothing for an external server or when
    /// already disposed. Raises InvalidOperationException if something could not be cleaned up.
    member _.Dispose() =
        let problems =
            lock gate (fun () ->
                if disposed then
                    []
                else
                    disposed <- true

                    onProcessExit
                    |> Option.iter (fun handler -> AppDomain.CurrentDomain.ProcessExit.RemoveHandler handler)

                    cleanup ())

        if not (List.isEmpty problems) then
            invalidOp (
                "The throwaway PostgreSQL server was not fully cleaned up:\n"
                + String.Join("\n", problems)
            )

    /// Disposes from a pool thread (stopping takes a few hundred milliseconds).
    member this.DisposeAsync() =
        ValueTask(Task.Run(fun () -> this.Dispose()))

    /// Makes sure the server is cleaned up when the process ends normally, even if never disposed.
    member internal this.CleanUpAtProcessExit() =
        if cluster.IsSome then
            let handler =
                EventHandler(fun _ _ ->
                    try
                        this.Dispose()
                    with _ ->
                        ())

            lock gate (fun () -> onProcessExit <- Some handler)
            AppDomain.CurrentDomain.ProcessExit.AddHandler handler

    override _.ToString() =
        match cluster with
        | Some cluster -> $"throwaway PostgreSQL on 127.0.0.1:{port} ({cluster.Root})"
        | None -> $"external PostgreSQL from {ConnectionVariable} (port {port})"

    interface IDisposable with
        member this.Dispose() = this.Dispose()

    interface IAsyncDisposable with
        member this.DisposeAsync() = this.DisposeAsync()

/// Starts throwaway PostgreSQL servers.
[<RequireQualifiedAccess>]
module Postgres =
    /// How many times a start is tried with a new free port when another process took the port first.
    let private portAttempts = 3

    let private external (options: PostgresOptions) (connectionString: string) =
        let builder =
            try
                NpgsqlConnectionStringBuilder(connectionString)
            with e ->
                invalidArg
                    "options"
                    $"{ConnectionVariable} is not a valid Npgsql connection string ({e.Message}); fix it or unset it."

        match PostgresCluster.waitForConnections connectionString (DateTime.UtcNow + options.Timeout) with
        | Ok() -> new PostgresServer(connectionString, builder.Port, None, options.Timeout)
        | Error e ->
            invalidOp
                $"The server named by {ConnectionVariable} ({builder.Host}:{builder.Port}) did not accept \
                  connections within {options.Timeout}: {e.Message}. Start it, or unset {ConnectionVariable} to use \
                  a throwaway server."

    let private throwaway (env: PostgresEnvironment) (options: PostgresOptions) =
        let binDirectory = locateBinaries env options.BinDirectory
        let tempRoot = options.TempRoot |> Option.defaultWith IO.Path.GetTempPath

        let cluster =
            PostgresCluster.create env binDirectory tempRoot options.Settings options.Timeout

        let rec attempt n =
            let port =
                if options.Port = 0 then
                    freeLoopbackPort ()
                else
                    options.Port

            match PostgresCluster.start port options.Timeout cluster with
            | Ok() -> port
            | Error message ->
                // pg_ctl may have given up while the server was still starting: make sure it is gone.
                PostgresCluster.stop PostgresCluster.Immediate options.Timeout cluster |> ignore

                if
                    options.Port = 0
                    && n < portAttempts
                    && message.Contains "Address already in use"
                then
                    attempt (n + 1)
                else
                    let asUser =
                        if env.IsRoot then
                            $" It ran as the '{ServerUser}' user because this process is root."
                        else
                            ""

                    invalidOp $"The throwaway PostgreSQL server did not start.{asUser}\n{message}"

        let port =
            try
                attempt 1
            with _ ->
                (try
                    PostgresCluster.delete cluster
                 with _ ->
                     ())

                reraise ()

        let server =
            new PostgresServer(PostgresCluster.connectionString port, port, Some cluster, options.Timeout)

        server.CleanUpAtProcessExit()
        server

    /// Starts a server with the given options, reading the given environment (tests fake it).
    let internal startFrom (env: PostgresEnvironment) (options: PostgresOptions) : PostgresServer =
        let options = PostgresOptions.validate options

        match env.Variable ConnectionVariable with
        | Some connectionString when options.AllowExternalServer -> external options connectionString
        | _ -> throwaway env options

    /// <summary>Starts a server with the given options and waits until it accepts connections.</summary>
    /// <remarks>
    /// 1. Validates the options (ArgumentException saying what to set).
    /// 2. If KFLOW_TEST_PG holds a connection string and AllowExternalServer is true, returns that server
    ///    (non-throwaway) once it accepts a connection.
    /// 3. Otherwise finds the binaries (InvalidOperationException naming the package to install), runs
    ///    initdb in a temp directory and starts the server on a loopback port. As root, initdb and
    ///    pg_ctl run as the `postgres` user. A failure raises InvalidOperationException with the
    ///    server log's tail, after removing the directory.
    /// </remarks>
    [<CompiledName("StartWith")>]
    let startWith (options: PostgresOptions) : PostgresServer =
        startFrom (PostgresEnvironment.current ()) options

    /// Starts a server with PostgresOptions.defaults (a throwaway one unless KFLOW_TEST_PG is set).
    [<CompiledName("Start")>]
    let start () : PostgresServer = startWith PostgresOptions.defaults
