// The Reckon Android library (this folder) and a sample app (sample/).
pluginManagement {
    repositories { google(); mavenCentral(); gradlePluginPortal() }
}
dependencyResolutionManagement {
    repositories { google(); mavenCentral() }
}
rootProject.name = "reckon-android"
include(":sample")
