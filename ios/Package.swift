// swift-tools-version:5.9
// Reckon for iOS and macOS: the uniffi-generated Swift bindings plus a small
// async facade, over ReckonFFI.xcframework (built by build-xcframework.sh).
import PackageDescription

let package = Package(
    name: "Reckon",
    platforms: [.iOS(.v15), .macOS(.v13)],
    products: [
        .library(name: "Reckon", targets: ["Reckon"]),
    ],
    targets: [
        .binaryTarget(name: "ReckonFFI", path: "ReckonFFI.xcframework"),
        .target(
            name: "Reckon",
            dependencies: ["ReckonFFI"],
            path: "Sources/Reckon",
            linkerSettings: [.linkedFramework("Metal"), .linkedFramework("Accelerate"), .linkedLibrary("c++")]
        ),
    ]
)
