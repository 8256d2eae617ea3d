// Tests for src/KFlow.Testing/Postgres*.fs: the throwaway PostgreSQL server starts, answers, survives a
// restart, cleans up after itself, and says clearly what is wrong when it cannot run.
module KFlow.Testing.Tests.PostgresTests

open System
open System.IO
open System.Net
open System.Net.Sockets
open Expecto
open Npgsql
open KFlow.Testing
open KFlow.Testing.PostgresTools

/// Options for tests about the throwaway server itself: KFLOW_TEST_PG must not replace it.
let private throwawayOnly = {
    PostgresOptions.defaults with
        AllowExternalServer = false
}

/// The real environment with some variables replaced (and all others unset).
let private environmentWith (variables: (string * string) list) = {
    PostgresEnvironment.current () with
        Variable = fun name -> Map.tryFind name (Map variables)
}

let private execute (connectionString: string) (sql: string) =
    use connection = new NpgsqlConnection(connectionString)
    connection.Open()
    use command = new NpgsqlCommand(sql, connection)
    command.ExecuteNonQuery() |> ignore

let private scalar (connectionString: string) (sql: string) : obj =
    use connection = new NpgsqlConnection(connectionString)
    connection.Open()
    use command = new NpgsqlCommand(sql, connection)

    match command.ExecuteScalar() with
    | null -> failwith $"'{sql}' returned no value"
    | value -> value

/// A table name no other test (or external server's user) has.
let private freshTable () =
    "kflow_test_" + Guid.NewGuid().ToString("N").Substring(0, 12)

/// Whether a process with this id exists and is not a zombie (Linux: /proc/<pid>/stat).
let private processAlive (pid: int) =
    let stat = $"/proc/{pid}/stat"

    try
        let text = File.ReadAllText stat
        // The state follows the command name in parentheses: "pid (comm) S ..."
        let state = text.Substring(text.LastIndexOf ')' + 2, 1)
        state <> "Z" && state <> "X"
    with
    | :? FileNotFoundException
    | :? DirectoryNotFoundException -> false

let private portIsFree (port: int) =
    use listener = new TcpListener(IPAddress.Loopback, port)

    try
        listener.Start()
        listener.Stop()
        true
    with :? SocketException ->
        false

/// The exception a failed connection raises, or None if the connection worked.
let private connectionFailure (connectionString: string) =
    try
        scalar connectionString "select 1" |> ignore
        None
    with e ->
        Some e

let private isConnectionError (e: exn) =
    match e with
    | :? NpgsqlException
    | :? SocketException -> true
    | _ -> false

let private expectArgumentError (options: PostgresOptions) (mentions: string) =
    let e = Expect.throwsC (fun () -> Postgres.startWith options |> ignore) id
    Expect.isTrue (e :? ArgumentException) $"an ArgumentException, not {e.GetType().Name}: {e.Message}"
    Expect.stringContains e.Message mentions "the message names what to set"

/// The exception `start` throws, checked to be an InvalidOperationException (a set-up problem, not a
/// bad argument).
let private invalidOperation (start: unit -> unit) =
    let e = Expect.throwsC start id
    Expect.isTrue (e :? InvalidOperationException) $"an InvalidOperationException, not {e.GetType().Name}"
    e

let private serverTests =
    testList "server" [
        test "starts and answers select version()" {
            use server = Postgres.start ()
            let version = string (scalar server.ConnectionString "select version()")
            Expect.stringStarts version "PostgreSQL" "the server reports its version"
            Expect.isTrue server.IsRunning "the server is running"
        }

        test "keeps the rows written to a table" {
            use server = Postgres.start ()
            let table = freshTable ()
            execute server.ConnectionString $"create table {table} (id int primary key, name text not null)"

            try
                execute
                    server.ConnectionString
                    $"insert into {table} values (1, 'one'), (2, 'two'), (3, 'three')"

                let count = scalar server.ConnectionString $"select count(*) from {table}" :?> int64

                let name =
                    scalar server.ConnectionString $"select name from {table} where id = 2" :?> string

                Expect.equal count 3L "three rows"
                Expect.equal name "two" "the row with id 2"
            finally
                execute server.ConnectionString $"drop table {table}"
        }

        test "is throwaway, on a loopback port, with a data directory" {
            use server = Postgres.startWith throwawayOnly
            Expect.isTrue server.IsThrowaway "a throwaway server"
            Expect.isTrue (server.Port > 0) "a port was picked"
            Expect.stringContains server.ConnectionString "127.0.0.1" "loopback"
            Expect.isTrue (Directory.Exists server.DataDirectory) "its data directory exists"
            let fsync = string (scalar server.ConnectionString "show fsync")
            Expect.equal fsync "off" "fsync is off for speed"
        }

        test "fails connections while stopped, and keeps its data across a restart" {
            use server = Postgres.startWith throwawayOnly
            let table = freshTable ()
            execute server.ConnectionString $"create table {table} (id int primary key)"
            execute server.ConnectionString $"insert into {table} values (1), (2)"
            let port = server.Port

            server.Stop()
            Expect.isFalse server.IsRunning "stopped"

            match connectionFailure server.ConnectionString with
            | Some e ->
                Expect.isTrue (isConnectionError e) $"a connection error, not {e.GetType().Name}: {e.Message}"
            | None -> failtest "a connection worked while the server was stopped"

            server.Start()
            Expect.isTrue server.IsRunning "running again"
            Expect.equal server.Port port "same port after Start"

            Expect.equal
                (scalar server.ConnectionString $"select count(*) from {table}" :?> int64)
                2L
                "rows kept"

            execute server.ConnectionString $"insert into {table} values (3)"
            server.Restart()
            Expect.equal server.Port port "same port after Restart"

            Expect.equal
                (scalar server.ConnectionString $"select count(*) from {table}" :?> int64)
                3L
                "rows kept"
        }

        test "disposing stops the server, frees its port and deletes its directory" {
            let server = Postgres.startWith throwawayOnly
            let root = Path.GetDirectoryName server.DataDirectory
            let port = server.Port

            let pid =
                server.PostmasterProcessId
                |> Option.defaultWith (fun () -> failtest "a running server has a postmaster")

            Expect.isTrue (processAlive pid) "the postmaster runs before dispose"
            (server :> IDisposable).Dispose()
            Expect.isFalse server.IsRunning "not running after dispose"
            Expect.isFalse (processAlive pid) "the postmaster is gone"
            Expect.isFalse (Directory.Exists root) "the temp directory is gone"
            Expect.isTrue (portIsFree port) "the port is free"
            Expect.isSome (connectionFailure server.ConnectionString) "connections fail"
            (server :> IDisposable).Dispose() // a second dispose does nothing
            Expect.throwsT<ObjectDisposedException> server.Restart "restart after dispose is refused"
        }

        testTask "disposing asynchronously cleans up too" {
            let server = Postgres.startWith throwawayOnly
            let root = Path.GetDirectoryName server.DataDirectory
            do! (server :> IAsyncDisposable).DisposeAsync()
            Expect.isFalse (Directory.Exists root) "the temp directory is gone"
        }

        test "two servers side by side get their own ports and data" {
            use first = Postgres.startWith throwawayOnly
            use second = Postgres.startWith throwawayOnly
            Expect.notEqual first.Port second.Port "different ports"
            Expect.notEqual first.DataDirectory second.DataDirectory "different data directories"
            let table = freshTable ()
            execute first.ConnectionString $"create table {table} (id int)"

            let exists (server: PostgresServer) =
                scalar server.ConnectionString $"select to_regclass('{table}') is not null" :?> bool

            Expect.isTrue (exists first) "the table is in the first server"
            Expect.isFalse (exists second) "but not in the second"
        }

        test "a server that cannot start reports its log and leaves nothing behind" {
            let tempRoot = Directory.CreateTempSubdirectory("kflow-pg-test-").FullName

            try
                let options = {
                    throwawayOnly with
                        TempRoot = Some tempRoot
                        Settings = [ "shared_buffers", "plenty" ]
                }

                if PostgresEnvironment.current().IsRoot then
                    PostgresTools.giveToServerUser tempRoot

                let e = invalidOperation (fun () -> Postgres.startWith options |> ignore)

                Expect.stringContains
                    e.Message
                    "shared_buffers"
                    "the server log's complaint is in the message"

                Expect.isEmpty (Directory.GetFileSystemEntries tempRoot) "the cluster's directory was removed"
            finally
                Directory.Delete(tempRoot, true)
        }

        test "a port already taken is reported with the server log" {
            use first = Postgres.startWith throwawayOnly

            let e =
                invalidOperation (fun () ->
                    Postgres.startWith { throwawayOnly with Port = first.Port } |> ignore)

            Expect.stringContains
                e.Message
                "Address already in use"
                "the server log's complaint is in the message"

            Expect.isNone (connectionFailure first.ConnectionString) "the first server still answers"
        }

        test "uses the server in KFLOW_TEST_PG instead of a throwaway one" {
            use real = Postgres.startWith throwawayOnly
            let env = environmentWith [ ConnectionVariable, real.ConnectionString ]
            let external = Postgres.startFrom env PostgresOptions.defaults
            Expect.isFalse external.IsThrowaway "not throwaway"
            Expect.equal external.ConnectionString real.ConnectionString "the given connection string"
            Expect.equal external.Port real.Port "the port of the given connection string"
            Expect.isNull (box external.DataDirectory) "no data directory"

            Expect.stringStarts
                (string (scalar external.ConnectionString "select version()"))
                "PostgreSQL"
                "answers"

            let e = Expect.throwsC (fun () -> external.Restart()) id
            Expect.isTrue (e :? InvalidOperationException) "restart is refused"
            Expect.stringContains e.Message "throwaway" "the message says fault tests need a throwaway server"
            Expect.throwsT<InvalidOperationException> external.Stop "stop is refused"
            (external :> IDisposable).Dispose()
            Expect.isNone (connectionFailure real.ConnectionString) "disposing it leaves the server running"

            use own = Postgres.startFrom env throwawayOnly
            Expect.isTrue own.IsThrowaway "AllowExternalServer = false ignores KFLOW_TEST_PG"
            Expect.notEqual own.Port real.Port "a server of its own"
        }
    ]

let private setupTests =
    testList "set-up" [
        test "refuses a port outside 0..65535" {
            expectArgumentError { throwawayOnly with Port = -1 } "PostgresOptions.Port"
            expectArgumentError { throwawayOnly with Port = 65536 } "PostgresOptions.Port"
        }

        test "refuses a timeout that is not positive" {
            expectArgumentError
                {
                    throwawayOnly with
                        Timeout = TimeSpan.Zero
                }
                "PostgresOptions.Timeout"
        }

        test "refuses bad settings and settings it manages itself" {
            expectArgumentError
                {
                    throwawayOnly with
                        Settings = [ "bad name", "1" ]
                }
                "not a PostgreSQL setting name"

            expectArgumentError
                {
                    throwawayOnly with
                        Settings = [ "port", "5432" ]
                }
                "PostgresOptions.Port"

            expectArgumentError
                {
                    throwawayOnly with
                        Settings = [ "work_mem", "1\n2" ]
                }
                "one line"
        }

        test "refuses blank or missing directories" {
            expectArgumentError
                {
                    throwawayOnly with
                        BinDirectory = Some " "
                }
                "PostgresOptions.BinDirectory"

            expectArgumentError
                {
                    throwawayOnly with
                        TempRoot = Some "/nonexistent/kflow"
                }
                "PostgresOptions.TempRoot"
        }

        test "the C# With methods build the same options" {
            let built =
                PostgresOptions.defaults
                    .WithPort(5433)
                    .WithTimeout(TimeSpan.FromSeconds 5.0)
                    .WithSetting("work_mem", "8MB")
                    .WithAllowExternalServer(false)

            Expect.equal
                built
                {
                    PostgresOptions.defaults with
                        Port = 5433
                        Timeout = TimeSpan.FromSeconds 5.0
                        Settings = [ "work_mem", "8MB" ]
                        AllowExternalServer = false
                }
                "same options"
        }

        test "says which package to install when KFLOW_PG_BIN points nowhere" {
            let env = environmentWith [ BinVariable, "/nonexistent/kflow/bin" ]
            let e = invalidOperation (fun () -> Postgres.startFrom env throwawayOnly |> ignore)

            Expect.stringContains e.Message "KFLOW_PG_BIN is '/nonexistent/kflow/bin'" "names the variable"
            Expect.stringContains e.Message "apt-get install postgresql-15" "names the package"
        }

        test "says which package to install when no PostgreSQL is installed" {
            let env = {
                environmentWith [] with
                    PackageRoot = "/nonexistent/postgresql"
            }

            let e = invalidOperation (fun () -> Postgres.startFrom env throwawayOnly |> ignore)

            Expect.stringContains e.Message "apt-get install postgresql-15" "names the package"
            Expect.stringContains e.Message "KFLOW_TEST_PG" "mentions the alternative"
        }

        test "finds the highest installed version" {
            let packages = Directory.CreateTempSubdirectory("kflow-pg-packages-").FullName

            try
                for version in [ "9.6"; "15"; "13"; "16"; "notaversion" ] do
                    let bin = Directory.CreateDirectory(Path.Combine(packages, version, "bin")).FullName

                    if version <> "16" then // 16 is incomplete: no postgres program
                        for program in [ "initdb"; "pg_ctl"; "postgres" ] do
                            File.WriteAllText(Path.Combine(bin, program), "")

                let env = {
                    environmentWith [] with
                        PackageRoot = packages
                }

                Expect.equal
                    (locateBinaries env None)
                    (Path.Combine(packages, "15", "bin"))
                    "15 is the highest complete"
            finally
                Directory.Delete(packages, true)
        }
    ]

let tests = testSequenced (testList "Postgres" [ setupTests; serverTests ])
