// One throwaway PostgreSQL cluster on disk and its lifecycle: temp directory, initdb, test settings,
// pg_ctl start/stop, readiness and the server log. Internal: Postgres.fs wraps it in PostgresServer.
module internal KFlow.Testing.PostgresCluster

open System
open System.Diagnostics
open System.IO
open System.Threading
open Npgsql
open KFlow.Testing.PostgresTools

/// A cluster's files: `<Root>/data` (the data directory) and `<Root>/server.log`.
[<NoEquality; NoComparison>]
type Cluster = {
    Environment: PostgresEnvironment
    BinDirectory: string
    Root: string
    DataDirectory: string
    LogFile: string
}

/// Test settings: durability is traded for speed, and the server is reachable on loopback TCP only.
let private testSettings = [
    "listen_addresses", "127.0.0.1"
    "unix_socket_directories", ""
    "fsync", "off"
    "synchronous_commit", "off"
    "full_page_writes", "off"
]

let private quote (value: string) = "'" + value.Replace("'", "''") + "'"

let private program cluster name =
    Path.Combine(cluster.BinDirectory, name)

/// The last lines of the server log, or a note saying why there are none.
let logTail (lines: int) (cluster: Cluster) =
    try
        use stream =
            new FileStream(
                cluster.LogFile,
                FileMode.Open,
                FileAccess.Read,
                FileShare.ReadWrite ||| FileShare.Delete
            )

        use reader = new StreamReader(stream)
        let all = reader.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries)
        String.Join("\n", all |> Array.skip (max 0 (all.Length - lines)))
    with
    | :? FileNotFoundException
    | :? DirectoryNotFoundException -> "(no server log was written)"
    | e -> $"(the server log could not be read: {e.Message})"

/// Removes the cluster's directory and everything in it. Raises if it cannot.
let delete (cluster: Cluster) =
    let rec attempt n =
        try
            if Directory.Exists cluster.Root then
                Directory.Delete(cluster.Root, true)
        with :? IOException when n > 1 ->
            Thread.Sleep 100
            attempt (n - 1)

    attempt 5

/// <summary>Makes a new cluster in a fresh temp directory.</summary>
/// <remarks>
/// 1. Creates `kflow-pg-&lt;random&gt;` under tempRoot (owner-only), and gives it to `postgres` when root.
/// 2. Runs initdb (superuser `postgres`, trust authentication, UTF8, C locale, no sync).
/// 3. Appends the test settings and the extra settings to postgresql.conf.
/// The directory is removed again if any step fails.
/// </remarks>
let create env binDirectory (tempRoot: string) (settings: (string * string) list) (timeout: TimeSpan) =
    let root =
        Path.Combine(Path.GetFullPath tempRoot, "kflow-pg-" + Guid.NewGuid().ToString("N").Substring(0, 12))

    Directory.CreateDirectory(
        root,
        UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute
    )
    |> ignore

    let cluster = {
        Environment = env
        BinDirectory = binDirectory
        Root = root
        DataDirectory = Path.Combine(root, "data")
        LogFile = Path.Combine(root, "server.log")
    }

    try
        if env.IsRoot then
            giveToServerUser root

        let initdb =
            runAsServerUser env root timeout (program cluster "initdb") [
                "--pgdata=" + cluster.DataDirectory
                "--username=" + ServerUser
                "--auth=trust"
                "--encoding=UTF8"
                "--locale=C"
                "--no-sync"
            ]

        if initdb.ExitCode <> 0 then
            let asUser =
                if env.IsRoot then
                    $" (run as the '{ServerUser}' user because this process is root; that user must be able to \
                       reach {root}: set PostgresOptions.TempRoot or TMPDIR to a directory it can reach, e.g. /tmp)"
                else
                    ""

            invalidOp $"initdb failed with exit code {initdb.ExitCode}{asUser}:\n{initdb.Output.Trim()}"

        let lines = [
            yield "\n# Added by KFlow.Testing: a throwaway cluster for tests."
            for name, value in testSettings @ settings -> $"{name} = {quote value}"
        ]

        File.AppendAllLines(Path.Combine(cluster.DataDirectory, "postgresql.conf"), lines)
        cluster
    with _ ->
        (try
            delete cluster
         with _ ->
             ())

        reraise ()

/// The connection string of the cluster's superuser database on the given port.
let connectionString (port: int) =
    NpgsqlConnectionStringBuilder(
        Host = "127.0.0.1",
        Port = port,
        Username = ServerUser,
        Database = "postgres"
    )
        .ConnectionString

/// Opens a connection and runs `select 1` until it works or the deadline passes; the last error if not.
let waitForConnections (connectionString: string) (deadline: DateTime) : Result<unit, exn> =
    let once =
        NpgsqlConnectionStringBuilder(connectionString, Pooling = false, Timeout = 5)

    let rec attempt () =
        let outcome =
            try
                use connection = new NpgsqlConnection(once.ConnectionString)
                connection.Open()
                use command = new NpgsqlCommand("select 1", connection)
                command.ExecuteScalar() |> ignore
                Ok()
            with e ->
                Error e

        match outcome with
        | Error _ when DateTime.UtcNow < deadline ->
            Thread.Sleep 50
            attempt ()
        | result -> result

    attempt ()

let private seconds (timeout: TimeSpan) =
    string (max 1 (int (Math.Ceiling timeout.TotalSeconds)))

/// `pg_ctl <command> --pgdata=… --wait --timeout=…` with `options`, as the server's user; pg_ctl
/// itself may take 10 s past `timeout`.
let private pgCtlWaiting (cluster: Cluster) (timeout: TimeSpan) (command: string) (options: string list) =
    runAsServerUser
        cluster.Environment
        cluster.Root
        (timeout + TimeSpan.FromSeconds 10.0)
        (program cluster "pg_ctl")
        ([
            command
            "--pgdata=" + cluster.DataDirectory
            "--wait"
            "--timeout=" + seconds timeout
         ]
         @ options)

/// <summary>Starts the server on the given port and waits until it accepts connections.</summary>
/// <remarks>
/// `pg_ctl start -w` waits for the server to report itself ready; then a connection is retried until
/// it works. On failure the error holds pg_ctl's output and the tail of the server log.
/// </remarks>
let start (port: int) (timeout: TimeSpan) (cluster: Cluster) : Result<unit, string> =
    let deadline = DateTime.UtcNow + timeout

    let pgCtl =
        pgCtlWaiting cluster timeout "start" [ "--log=" + cluster.LogFile; "-o"; $"-p {port}" ]

    let serverLog () =
        $"Last lines of the server log ({cluster.LogFile}):\n{logTail 30 cluster}"

    if pgCtl.ExitCode <> 0 then
        Error $"pg_ctl start exited with {pgCtl.ExitCode}:\n{pgCtl.Output.Trim()}\n{serverLog ()}"
    else
        match waitForConnections (connectionString port) deadline with
        | Ok() -> Ok()
        | Error e ->
            Error $"The server started but refused connections until the timeout: {e.Message}\n{serverLog ()}"

/// How a server is stopped: `Fast` rolls back sessions and checkpoints; `Immediate` just quits (crash-like).
type StopMode =
    | Fast
    | Immediate

/// Stops the server with `pg_ctl stop -w`; an error (with the server log) if pg_ctl fails.
let stop (mode: StopMode) (timeout: TimeSpan) (cluster: Cluster) : Result<unit, string> =
    let modeName =
        match mode with
        | Fast -> "fast"
        | Immediate -> "immediate"

    let pgCtl = pgCtlWaiting cluster timeout "stop" [ "--mode=" + modeName ]

    if pgCtl.ExitCode = 0 then
        Ok()
    else
        Error
            $"pg_ctl stop exited with {pgCtl.ExitCode}:\n{pgCtl.Output.Trim()}\n\
              Last lines of the server log:\n{logTail 30 cluster}"

/// The postmaster's process id, from postmaster.pid; None when the server is not running.
let postmasterProcessId (cluster: Cluster) : int option =
    try
        let pidFile = Path.Combine(cluster.DataDirectory, "postmaster.pid")

        if File.Exists pidFile then
            match Int32.TryParse((File.ReadLines pidFile |> Seq.head).Trim()) with
            | true, pid -> Some pid
            | _ -> None
        else
            None
    with _ ->
        None

/// Kills the postmaster outright (last resort when pg_ctl cannot stop it).
let kill (cluster: Cluster) =
    match postmasterProcessId cluster with
    | Some pid ->
        try
            use proc = Process.GetProcessById pid
            proc.Kill true
            proc.WaitForExit 10_000 |> ignore
        with :? ArgumentException ->
            () // already gone
    | None -> ()
